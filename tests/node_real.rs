//! `pot node` on real models, as separate processes on 127.0.0.1: a provider serving SmolLM2
//! joins the network, a router holding its own copy finds it by the model's weight hash on
//! Kademlia and audits its jobs over libp2p (receipts, VRF-chosen openings, re-execution).

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
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pot node provider starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines
            .next()
            .expect("the provider prints a line once listening")
            .unwrap();
        let v: Value = serde_json::from_str(&line).expect("a JSON line");
        assert_eq!(v["event"], "listening", "{v}");
        std::thread::spawn(move || for _ in lines {});
        Provider {
            child,
            addrs: v["addrs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect(),
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
