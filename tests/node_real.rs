//! `pot node` on real models, as separate processes on 127.0.0.1: a provider serving SmolLM2
//! joins the network, a router holding its own copy finds it by the model's weight hash on
//! Kademlia and audits its jobs over libp2p (receipts, VRF-chosen openings, re-execution);
//! and a network of three providers, two of them cheats, behind a router's OpenAI API.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Instant;

use common::{model_path, SMOL};
use serde_json::Value;

/// A `pot node provider` child, killed on drop.
struct Provider {
    child: Child,
    addrs: Vec<String>,
    peer: String,
}

impl Provider {
    fn start(model: &Path, dir: &Path, name: &str) -> Provider {
        Self::start_with(model, dir, name, &[])
    }

    fn start_with(model: &Path, dir: &Path, name: &str, extra: &[&str]) -> Provider {
        let key = dir.join(format!("{name}.key"));
        keygen(&["--node"], &key);
        let mut child = common::pot()
            .args(["node", "provider", "--model"])
            .arg(model)
            .arg("--node-key")
            .arg(&key)
            .arg("--store")
            .arg(dir.join(format!("{name}.store")))
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pot node provider starts");
        let v = first_line(&mut child, "listening", None);
        Provider {
            child,
            addrs: addrs(&v),
            peer: v["peer"].as_str().unwrap().to_string(),
        }
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The JSON line a node prints once it is up (its `event` must be `event`); the rest of its
/// stdout is drained.
fn first_line(child: &mut Child, event: &str, log: Option<&std::sync::Mutex<String>>) -> Value {
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = match lines.next() {
        Some(Ok(l)) => l,
        _ => panic!(
            "the node printed nothing once started: {}",
            log.map(|l| l.lock().unwrap().clone()).unwrap_or_default()
        ),
    };
    let v: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(v["event"], event, "{v}");
    std::thread::spawn(move || for _ in lines {});
    v
}

fn addrs(v: &Value) -> Vec<String> {
    v["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn keygen(args: &[&str], out: &Path) {
    let o = common::pot()
        .arg("keygen")
        .args(args)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_router_finds_a_provider_by_weight_hash_and_accepts_its_audited_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let provider = Provider::start(&model_path(SMOL), dir.path(), "honest");
    let started = t.elapsed().as_secs_f64();
    assert!(provider.addrs[0].ends_with(&format!("/p2p/{}", provider.peer)));
    let router_key = dir.path().join("router.key");
    keygen(&["--router"], &router_key);

    let t = Instant::now();
    let o = common::pot()
        .args(["node", "router", "--router-key"])
        .arg(&router_key)
        .arg("--model")
        .arg(model_path(SMOL))
        .args(["--bootstrap", &provider.addrs[0], "--no-mdns"])
        .args(["--jobs", "3", "--max-tokens", "16", "--json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let providers = v["providers"].as_array().unwrap();
    assert_eq!(providers.len(), 1, "{v}");
    let p = &providers[0];
    assert_eq!(p["peer"], provider.peer.as_str());
    assert_eq!(p["tally"]["accepted"], 3, "{v}");
    assert_eq!(p["tally"]["rejected"], 0, "{v}");
    assert_eq!(v["all_accepted"], true);
    eprintln!(
        "provider up in {started:.1} s; router: found it in {:.2} s, 3 audited jobs ({} tokens), {:.1} s in all",
        v["discover_s"].as_f64().unwrap(),
        p["tally"]["tokens"],
        t.elapsed().as_secs_f64()
    );

    // A model nobody serves: the router says so and exits 2, after its discovery window.
    let o = common::pot()
        .args(["node", "router", "--router-key"])
        .arg(&router_key)
        .arg("--model")
        .arg(model_path(common::QWEN05))
        .args(["--bootstrap", &provider.addrs[0], "--no-mdns"])
        .args(["--discover-s", "3"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no provider of weights"), "{err}");
}

#[test]
fn bad_addresses_and_keys_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let router_key = dir.path().join("router.key");
    keygen(&["--router"], &router_key);
    for (bootstrap, want) in [
        ("not-an-address", "is not a multiaddress"),
        ("/ip4/127.0.0.1/tcp/4001", "must end in /p2p/<peer id>"),
    ] {
        let o = common::pot()
            .args(["node", "router", "--router-key"])
            .arg(&router_key)
            .arg("--model")
            .arg(model_path(SMOL))
            .args(["--bootstrap", bootstrap, "--no-mdns"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{bootstrap}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // A router key where a node key belongs.
    let o = common::pot()
        .args(["node", "provider", "--model"])
        .arg(model_path(SMOL))
        .arg("--node-key")
        .arg(&router_key)
        .arg("--store")
        .arg(dir.path().join("s"))
        .args(["--no-mdns"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("router.key"), "{err}");
    assert!(!dir.path().join("s").exists(), "nothing written");
}

/// A `pot node router --openai` child, killed on drop.
struct Router {
    child: Child,
    url: String,
    peer: String,
    addrs: Vec<String>,
    weight_hash: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Router {
    fn start(dir: &Path, name: &str, model: &Path, extra: &[&str]) -> Router {
        let key = dir.join(format!("{name}.vrf"));
        if !key.exists() {
            keygen(&["--router"], &key);
        }
        let mut child = common::pot()
            .args(["node", "router", "--router-key"])
            .arg(&key)
            .arg("--model")
            .arg(model)
            .args(["--model-name", "claimed", "--openai", "127.0.0.1:0"])
            .arg("--reputation")
            .arg(dir.join(format!("{name}.redb")))
            .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pot node router starts");
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&l);
                s.push('\n');
            }
        });
        let v = first_line(&mut child, "ready", Some(&log));
        Router {
            child,
            url: v["openai"].as_str().unwrap().to_string(),
            peer: v["peer"].as_str().unwrap().to_string(),
            addrs: addrs(&v),
            weight_hash: v["weight_hash"].as_str().unwrap().to_string(),
            log,
        }
    }

    fn status(&self) -> Value {
        reqwest::blocking::get(format!("{}/v1/pot/router", self.url))
            .unwrap()
            .json()
            .unwrap()
    }

    /// Wait until `done` holds of the status, or fail after `secs`.
    fn wait_for(&self, secs: u64, what: &str, done: impl Fn(&Value) -> bool) -> f64 {
        let t = Instant::now();
        loop {
            let s = self.status();
            if done(&s) {
                return t.elapsed().as_secs_f64();
            }
            assert!(
                t.elapsed().as_secs() < secs,
                "{what}: not after {secs} s: {s}\n{}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn banned(status: &Value, peer: &str) -> bool {
    !status["providers"][peer]["ban"].is_null()
}

/// One request through the router: the text, the provider that answered, whether it was
/// audited, and the receipt.
fn ask(http: &reqwest::blocking::Client, url: &str, i: usize) -> (String, String, bool, Value) {
    let (route, body) = if i.is_multiple_of(2) {
        (
            "chat/completions",
            serde_json::json!({"model": "claimed", "max_tokens": 12, "temperature": 0,
                "messages": [{"role": "user", "content": format!("Name a colour, number {i}.")}]}),
        )
    } else {
        (
            "completions",
            serde_json::json!({"model": "claimed", "max_tokens": 12, "temperature": 0.7, "seed": i,
                "prompt": format!("The {i}th line of the poem reads")}),
        )
    };
    let r = http
        .post(format!("{url}/v1/{route}"))
        .json(&body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let provider = r
        .headers()
        .get("x-pot-provider")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let audited = r.headers().get("x-pot-audited").is_some_and(|v| v == "yes");
    let v: Value = r.json().unwrap();
    assert_eq!(status, 200, "request {i}: {v}");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .or(v["choices"][0]["text"].as_str())
        .unwrap()
        .to_string();
    (text, provider, audited, v["pot"].clone())
}

/// The issue's network: an honest provider, one serving a cheaper model while advertising the
/// claimed model's weight hash (its receipts name the cheaper one), one serving the cheaper
/// model that forges the claimed hash into its receipts, and one that accepts jobs and never
/// answers; two routers holding the claimed model. Clients only ever get answers whose
/// receipts passed; both cheats are banned (the first on its receipt, the second by
/// re-execution) and never chosen again, the staller costs one timeout and a fault but no ban,
/// the honest provider is never flagged, the second router bans both cheats on the first
/// router's gossiped evidence after re-checking it, and a restarted router keeps its bans.
///
/// In CI: SmolLM2 claimed, its 2-bit copy as the cheaper model.
#[test]
fn a_router_serves_only_checked_answers_and_bans_both_cheats_for_good() {
    let copy = common::derived_model(
        &model_path(SMOL),
        "smol-q2_k.gguf",
        &["variant", "--to", "q2_k"],
    );
    cheats_network(&model_path(SMOL), &copy, "4");
}

/// The same with the issue's models: Qwen2.5-Coder 1.5B claimed, 0.5B as the cheaper model
/// (scripts/experiments-network.sh; minutes on 2 cores).
#[test]
#[ignore = "experiment: scripts/experiments-network.sh"]
fn a_router_bans_qwen_05b_claiming_and_forging_15b() {
    cheats_network(
        &model_path(common::QWEN15),
        &model_path(common::QWEN05),
        "60",
    );
}

fn cheats_network(claimed: &Path, copy: &Path, timeout_s: &str) {
    let dir = tempfile::tempdir().unwrap();
    let copy = copy.to_path_buf();
    let t = Instant::now();
    let a = Router::start(
        dir.path(),
        "a",
        claimed,
        &[
            "--audit-rate",
            "0.5",
            "--probation",
            "2",
            "--audit-steps",
            "8",
            "--request-timeout-s",
            timeout_s,
            "--attempts",
            "4",
        ],
    );
    let boot = a.addrs[0].clone();
    let b = Router::start(dir.path(), "b", claimed, &["--bootstrap", &boot]);
    let honest = Provider::start_with(claimed, dir.path(), "honest", &["--bootstrap", &boot]);
    let switcher = Provider::start_with(
        &copy,
        dir.path(),
        "switcher",
        &[
            "--bootstrap",
            &boot,
            "--claim-weight-hash",
            &a.weight_hash,
            "--announce-every-s",
            "1",
        ],
    );
    let forger = Provider::start_with(
        &copy,
        dir.path(),
        "forger",
        &[
            "--bootstrap",
            &boot,
            "--claim-weight-hash",
            &a.weight_hash,
            "--forge-receipts",
        ],
    );
    let staller = Provider::start_with(
        claimed,
        dir.path(),
        "staller",
        &["--bootstrap", &boot, "--stall"],
    );
    let discover_s = a.wait_for(30, "discovery of the four providers", |s| {
        s["known"].as_array().is_some_and(|k| k.len() == 4)
    });
    eprintln!(
        "four providers found {discover_s:.1} s after the router asked ({:.1} s from the start)",
        t.elapsed().as_secs_f64()
    );
    // The switcher's announcement reaches the router (its evidence needs it).
    std::thread::sleep(std::time::Duration::from_secs(2));

    let http = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(900))
        .build()
        .unwrap();
    let t0_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut audited = 0;
    let mut latencies = Vec::new();
    for i in 0..10 {
        let t = Instant::now();
        let (text, provider, was_audited, receipt) = ask(&http, &a.url, i);
        latencies.push(t.elapsed().as_secs_f64());
        assert_eq!(provider, honest.peer, "request {i} was answered by a cheat");
        assert!(!receipt.is_null(), "the answer carries its receipt");
        assert!(!text.is_empty() || receipt["output"].as_array().is_some());
        audited += usize::from(was_audited);
    }
    eprintln!(
        "10 requests: latency {} s (the first ones include the cheats' and the staller's attempts)",
        latencies
            .iter()
            .map(|l| format!("{l:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let s = a.status();
    eprintln!(
        "router a after 10 requests: {}",
        serde_json::to_string_pretty(&s["providers"]).unwrap()
    );
    let rec = |p: &str| s["providers"][p].clone();
    assert!(banned(&s, &switcher.peer), "{s}");
    assert!(banned(&s, &forger.peer), "{s}");
    assert!(
        rec(&switcher.peer)["ban"]["reason"]
            .as_str()
            .unwrap()
            .contains("names weights"),
        "{s}"
    );
    assert!(
        rec(&forger.peer)["ban"]["reason"]
            .as_str()
            .unwrap()
            .contains("re-execution disagrees"),
        "{s}"
    );
    let h = rec(&honest.peer);
    assert!(
        h["ban"].is_null(),
        "the honest provider is never banned: {s}"
    );
    assert_eq!(h["faults"], 0, "{s}");
    assert_eq!(h["audits_failed"], 0, "{s}");
    assert_eq!(h["passed"], 10, "{s}");
    assert!(audited >= 2, "probation audits the first two jobs");
    let st = rec(&staller.peer);
    assert!(st["ban"].is_null(), "a stall is a fault, not a proof: {s}");
    assert_eq!(
        (st["jobs"].as_u64(), st["faults"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    // The evidence is kept: the forger's receipt, the VRF choice and its opening.
    let ev: Value = http
        .get(format!("{}/v1/pot/router/evidence/{}", a.url, forger.peer))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let e = &ev["evidence"][0]["evidence"];
    assert_eq!(e["rejection"]["reason"], "diverges", "{ev}");
    assert!(e["receipt"]["steps"].as_u64().unwrap() > 0, "{ev}");
    assert!(!e["selection"].is_null() && !e["opening"].is_null(), "{ev}");
    let cheat_jobs = (
        rec(&switcher.peer)["jobs"].clone(),
        rec(&forger.peer)["jobs"].clone(),
    );
    assert_eq!(cheat_jobs, (Value::from(1), Value::from(1)), "{s}");
    for (who, p) in [
        ("bait-and-switch", &switcher.peer),
        ("forger", &forger.peer),
    ] {
        let at = rec(p)["ban"]["at_ms"].as_u64().unwrap();
        eprintln!(
            "{who} banned {:.2} s after the first request was sent",
            (at - t0_ms) as f64 / 1000.0
        );
    }
    eprintln!("payload bytes on the wire: {}", s["wire"]);

    // Router b never sent them a job: it bans on a's gossiped evidence, re-checked.
    let b_s = b.wait_for(60, "router b banning both cheats on a's reports", |s| {
        banned(s, &switcher.peer) && banned(s, &forger.peer)
    });
    let sb = b.status();
    assert!(!banned(&sb, &honest.peer), "{sb}");
    for p in [&switcher.peer, &forger.peer] {
        assert_eq!(sb["providers"][p]["ban"]["by"], a.peer.as_str(), "{sb}");
    }
    assert_eq!(sb["providers"][&forger.peer]["jobs"], 0, "{sb}");
    eprintln!("router b banned both on gossiped evidence within {b_s:.1} s");

    // A router restart (killed, not stopped) keeps the bans; the cheats are never chosen again.
    drop(a);
    let a = Router::start(dir.path(), "a", claimed, &["--bootstrap", &honest.addrs[0]]);
    a.wait_for(30, "rediscovery", |s| {
        s["known"].as_array().is_some_and(|k| k.len() == 4)
    });
    let s = a.status();
    assert!(
        banned(&s, &switcher.peer) && banned(&s, &forger.peer),
        "{s}"
    );
    for i in 10..14 {
        let (_, provider, _, _) = ask(&http, &a.url, i);
        assert_eq!(provider, honest.peer);
    }
    let s = a.status();
    assert_eq!(
        (
            s["providers"][&switcher.peer]["jobs"].clone(),
            s["providers"][&forger.peer]["jobs"].clone()
        ),
        cheat_jobs,
        "a banned provider gets no job: {s}"
    );
    assert_eq!(s["providers"][&honest.peer]["passed"], 14, "{s}");

    // A router without the model (--weight-hash): it checks receipts, so the switcher never
    // serves through it, but it cannot re-execute, so it says every answer is unaudited and
    // cannot tell the forger from the honest provider (the documented gap).
    let c = Router::start(
        dir.path(),
        "c",
        claimed,
        &[
            "--bootstrap",
            &honest.addrs[0],
            "--weight-hash",
            &a.weight_hash,
            "--request-timeout-s",
            timeout_s,
            "--attempts",
            "4",
        ],
    );
    assert_eq!(c.status()["reexecutes"], false);
    assert!(c.log.lock().unwrap().contains("cannot re-execute"));
    c.wait_for(30, "discovery", |s| {
        s["known"].as_array().is_some_and(|k| k.len() == 4)
    });
    for i in 20..24 {
        let (_, provider, audited, _) = ask(&http, &c.url, i);
        assert!(!audited, "a router without the model audits nothing");
        assert!(
            provider == honest.peer || provider == forger.peer,
            "{provider}"
        );
    }
    let sc = c.status();
    assert!(!banned(&sc, &honest.peer), "{sc}");
    assert!(!banned(&sc, &forger.peer), "{sc}");
    if sc["providers"][&switcher.peer]["jobs"]
        .as_u64()
        .unwrap_or(0)
        > 0
    {
        assert!(banned(&sc, &switcher.peer), "{sc}");
    }
    drop(c);

    // The official openai client, through the router: chat, streamed chat, completion.
    let python = std::env::var("POT_OPENAI_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = r#"
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1] + "/v1", api_key="none")
r = c.chat.completions.create(model="claimed", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0)
assert r.choices[0].message.content is not None
parts = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(model="claimed", messages=[{"role": "user", "content": "Say hi."}], max_tokens=8, temperature=0, stream=True) if ch.choices]
assert "".join(parts) == r.choices[0].message.content, (parts, r.choices[0].message.content)
t = c.completions.create(model="claimed", prompt="Once upon", max_tokens=6, temperature=0)
assert t.choices[0].text is not None
try:
    c.chat.completions.create(model="other", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("an unknown model was accepted")
except openai.NotFoundError:
    pass
print("openai client ok")
"#;
    let o = std::process::Command::new(&python)
        .args(["-c", script, &a.url])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    drop((switcher, forger, staller));
}

/// mDNS alone: a provider and a router on this host, neither told where the other is, find
/// each other on the local network (multicast) and the router audits a job.
#[test]
fn a_router_finds_a_provider_by_mdns_alone() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("mdns.key");
    keygen(&["--node"], &key);
    let router_key = dir.path().join("router.key");
    keygen(&["--router"], &router_key);
    let mut child = common::pot()
        .args(["node", "provider", "--model"])
        .arg(model_path(SMOL))
        .arg("--node-key")
        .arg(&key)
        .arg("--store")
        .arg(dir.path().join("mdns.store"))
        .args(["--listen", "/ip4/0.0.0.0/tcp/0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    let peer = v["peer"].as_str().unwrap().to_string();
    let o = common::pot()
        .args(["node", "router", "--router-key"])
        .arg(&router_key)
        .arg("--model")
        .arg(model_path(SMOL))
        .args([
            "--discover-s",
            "20",
            "--jobs",
            "1",
            "--max-tokens",
            "8",
            "--json",
        ])
        .output()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(0),
        "no provider found by mDNS (does this host allow multicast?): {err}"
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let found: Vec<&str> = v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["peer"].as_str().unwrap())
        .collect();
    assert!(found.contains(&peer.as_str()), "{v}");
    eprintln!(
        "found by mDNS in {:.2} s",
        v["discover_s"].as_f64().unwrap()
    );
}
