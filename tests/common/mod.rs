//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The model cache of `scripts/fetch-models.sh`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("POT_MODELS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/pot/models"),
    }
}

/// A fetched model file; panics with the fix when it is missing.
pub fn model_path(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-models.sh first",
        p.display()
    );
    p
}

/// The `pot` binary under test (no backtraces in its errors).
pub fn pot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pot"));
    c.env("RUST_BACKTRACE", "0");
    c
}

/// `pot diff --ref REFERENCE --cand CANDIDATE --transcripts DIR`, for the caller to add flags.
pub fn diff_cmd(reference: &Path, candidate: &Path, transcripts: &Path) -> Command {
    let mut c = pot();
    c.arg("diff")
        .arg("--ref")
        .arg(reference)
        .arg("--cand")
        .arg(candidate)
        .arg("--transcripts")
        .arg(transcripts);
    c
}

pub const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const QWEN05: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
pub const QWEN15: &str = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

/// A `pot serve` child process, killed on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Server {
    pub fn start(model: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pot"))
            .args(["serve", "--model"])
            .arg(model_path(model))
            .args(["--port", "0", "--model-name", "vendor"])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .expect("pot serve starts");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let url = loop {
            let line = lines
                .next()
                .expect("pot serve prints its address")
                .expect("stderr is text");
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest
                    .split_whitespace()
                    .next()
                    .expect("an address")
                    .to_string();
            }
        };
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Server { child, url }
    }

    /// SIGTERM, then the exit status (within `wait`).
    pub fn terminate(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        let t = Instant::now();
        while t.elapsed() < wait {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
