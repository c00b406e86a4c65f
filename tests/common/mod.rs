//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod agreement;

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

/// The `pot` binary under test (no backtraces in its errors), with an empty calibration store
/// of its own: a calibration left on the machine must not change what a test sees (tests
/// that want one pass `--calibration` or set `POT_CALIBRATIONS`).
pub fn pot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pot"));
    c.env("RUST_BACKTRACE", "0");
    c.env("POT_CALIBRATIONS", empty_calibration_store());
    c
}

/// A calibration store that stays empty, one per test process.
pub fn empty_calibration_store() -> PathBuf {
    std::env::temp_dir().join(format!("pot-test-calibrations-{}", std::process::id()))
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

/// A model derived from a fetched one by `pot ARGS -o OUT SOURCE` (e.g. `variant --to f16`),
/// made once and kept beside the models (`derived/`, written to a temporary name first, so a
/// killed test leaves no half file). Derivation is deterministic; the folder's tag changes when
/// what `pot variant` writes does.
pub fn derived_model(source: &Path, name: &str, args: &[&str]) -> PathBuf {
    let dir = models_dir().join("derived-ladder-v1");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(name);
    if !out.is_file() {
        let part = dir.join(format!("{name}.{}.part", std::process::id()));
        let o = pot()
            .args(args)
            .arg("-o")
            .arg(&part)
            .arg(source)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::rename(&part, &out).unwrap();
    }
    out
}

/// Qwen2.5-Coder 0.5B as a full-precision claimed model: the f16 re-encoding of the fetched
/// Q4_K_M file (the same information, in the encoding vendors publish).
pub fn qwen05_f16() -> PathBuf {
    derived_model(
        &model_path(QWEN05),
        "qwen05-f16.gguf",
        &["variant", "--to", "f16"],
    )
}

/// A rung of the f16 Qwen 0.5B's quantization ladder (`pot variant --to RUNG`).
pub fn qwen05_rung(rung: &str) -> PathBuf {
    derived_model(
        &qwen05_f16(),
        &format!("qwen05-f16-{rung}.gguf"),
        &["variant", "--to", rung],
    )
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
        Self::start_file(&model_path(model), extra)
    }

    /// `pot serve` of a model file that is not one of the fetched models (a derived one).
    pub fn start_file(model: &Path, extra: &[&str]) -> Server {
        let mut child = pot()
            .args(["serve", "--model"])
            .arg(model)
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

/// `pot audit --json` of the endpoint at `url` (model name "vendor") against the reference
/// file, transcripts in `dir`: the exit code, the parsed outcome (`Null` when none) and stderr.
pub fn audit(
    reference: &Path,
    url: &str,
    dir: &Path,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let o = pot()
        .arg("audit")
        .arg("--ref")
        .arg(reference)
        .args([
            "--endpoint",
            url,
            "--model",
            "vendor",
            "--json",
            "--transcripts",
        ])
        .arg(dir)
        .args(extra)
        .output()
        .expect("pot runs");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o.status.code().unwrap_or(-1), v, stderr)
}

/// The Python that runs the MLX runtime (`mlx[cpu]` and `mlx-lm`): `POT_MLX_PYTHON`, else
/// `~/.cache/pot/mlx-venv/bin/python` (scripts/test.sh makes that venv once from PyPI).
pub fn mlx_python() -> PathBuf {
    match std::env::var_os("POT_MLX_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/pot/mlx-venv/bin/python"),
    }
}

/// Where checkpoints derived for the MLX tests are kept between runs (beside the models).
fn mlx_dir() -> PathBuf {
    let dir = models_dir().join("derived-mlx-v1");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `make(partial)` writes a derived folder once; it is kept as `name` (renamed from a
/// temporary name, so a killed test leaves no half folder).
fn derive_folder(name: &str, make: impl FnOnce(&Path)) -> PathBuf {
    let out = mlx_dir().join(name);
    if !out.is_dir() {
        let part = mlx_dir().join(format!(".{name}.part-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&part);
        make(&part);
        std::fs::rename(&part, &out).unwrap();
    }
    out
}

/// A fetched GGUF model as a Hugging Face folder (`pot export-hf`), kept as `name`.
pub fn hf_folder(model: &str, name: &str) -> PathBuf {
    let src = model_path(model);
    derive_folder(name, |part| {
        let o = pot()
            .args(["export-hf", "-o"])
            .arg(part)
            .arg(&src)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    })
}

/// `folder` with its safetensors rewritten by the `safetensors` library (Hugging Face's own
/// writer, which pads the header so that every tensor is aligned), kept as `name`: MLX's
/// writer does not pad, so its 16-bit values may sit at odd offsets.
pub fn hf_resaved(folder: &Path, name: &str) -> PathBuf {
    derive_folder(name, |part| {
        let script = r#"
import os, shutil, sys
from safetensors.numpy import load_file, save_file
src, dst = sys.argv[1:]
shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.safetensors"))
for f in os.listdir(src):
    if f.endswith(".safetensors"):
        save_file(load_file(os.path.join(src, f)), os.path.join(dst, f), metadata={"format": "pt"})
"#;
        let o = Command::new(mlx_python())
            .args(["-c", script])
            .arg(folder)
            .arg(part)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    })
}

/// An MLX checkpoint made by mlx-lm's own converter (`mlx_lm.convert ARGS`) from the Hugging
/// Face folder `hf`, kept as `name`.
pub fn mlx_convert(hf: &Path, name: &str, args: &[&str]) -> PathBuf {
    derive_folder(name, |part| {
        let o = Command::new(mlx_python())
            .args(["-m", "mlx_lm", "convert", "--hf-path"])
            .arg(hf)
            .arg("--mlx-path")
            .arg(part)
            .args(args)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run scripts/test.sh (it makes the MLX venv) or set POT_MLX_PYTHON",
                    mlx_python().display()
                )
            });
        assert!(
            o.status.success(),
            "mlx_lm.convert {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    })
}

/// The MLX runtime's token ids and logits for `texts` on `model` (scripts/mlx-yardstick.py),
/// as a fixture file: in `dir`, or kept beside a derived checkpoint (the MLX runtime takes about
/// a second a text here), under a name that changes with the texts and the script.
pub fn mlx_fixture(model: &Path, texts: &[&str], dir: &Path) -> PathBuf {
    use sha2::{Digest, Sha256};
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mlx-yardstick.py");
    let mut h = Sha256::new();
    h.update(std::fs::read(&script).unwrap());
    for t in texts {
        h.update((t.len() as u64).to_le_bytes());
        h.update(t.as_bytes());
    }
    let key = hex::encode(&h.finalize()[..8]);
    let name = model.file_name().unwrap().to_string_lossy().into_owned();
    let out = if model.parent() == Some(mlx_dir().as_path()) {
        mlx_dir().join(format!("{name}.mlx-{key}.json"))
    } else {
        dir.join(format!("{name}.mlx.json"))
    };
    if out.is_file() {
        return out;
    }
    let mut c = Command::new(mlx_python());
    c.arg(&script).arg(model);
    for t in texts {
        c.arg("--text").arg(t);
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let part = out.with_extension(format!("part-{}", std::process::id()));
    std::fs::write(&part, &o.stdout).unwrap();
    std::fs::rename(&part, &out).unwrap();
    out
}
