//! Model identity: names for a model that do not depend on how its file was packed.
//!
//! * `file_sha256`: the bytes of the file, as distributed.
//! * `weight_hash`: SHA-256 over the tensors sorted by name, each as (name, dtype, shape,
//!   stored bytes), length-prefixed: the same tensors in another container order hash the same,
//!   any changed weight changes it.
//! * `config_hash`: SHA-256 of the architecture hyper-parameters as canonical JSON.
//! * `tokenizer_hash`: SHA-256 of tokens, merges, types and special ids (see `model::tokenizer`).
//! * `tlsh`: a TLSH fuzzy hash of a *signature* of the dequantized weights (a fixed sample of
//!   each tensor, coarsely bucketed relative to the tensor's spread, after a digest of the
//!   tensor's name and shape), so a re-quantized copy of a model lies near it and a different
//!   model far. Compare two with [`tlsh_distance`]. Measured distances are in BENCHMARKS.md:
//!   re-encodings of one model 0–24, different models 36–134.
//!
//! This room reads model files and hashes; it never changes them.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::model::gguf::GgufFile;
use crate::model::ModelError;

/// Domain tag of the canonical weight hash.
const WEIGHT_TAG: &[u8] = b"pot/weights/v1";
/// Values sampled per tensor for the TLSH signature.
const SIGNATURE_SAMPLES: usize = 2048;
/// Signature bytes naming each tensor's name and shape.
const SHAPE_BYTES: usize = 32;
/// Signature buckets per standard deviation of a tensor.
const BUCKETS_PER_SIGMA: f32 = 4.0;

/// The identity of a model file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Identity {
    /// Path as given.
    pub path: String,
    /// Architecture (`general.architecture`).
    pub arch: String,
    /// Size of the file.
    pub file_bytes: u64,
    /// Number of weights.
    pub parameters: u64,
    /// Rows of the output layer (vocabulary entries the model scores).
    pub vocab_size: usize,
    /// SHA-256 of the file.
    pub file_sha256: String,
    /// Canonical weight hash.
    pub weight_hash: String,
    /// Hash of the hyper-parameters.
    pub config_hash: String,
    /// Hash of the tokenizer.
    pub tokenizer_hash: String,
    /// Hash of the vocabulary alone ([`crate::model::Tokenizer::vocab_hash`]; empty in
    /// identities recorded before it was).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub vocab_hash: String,
    /// TLSH of the weight signature (only from [`fingerprint`] with `tlsh = true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tlsh: Option<String>,
}

fn io_err(path: &str, e: std::io::Error) -> ModelError {
    ModelError::Open {
        path: path.to_string(),
        source: e,
    }
}

fn sha256_file(path: &Path) -> Result<String, ModelError> {
    let p = path.display().to_string();
    let mut f = std::fs::File::open(path).map_err(|e| io_err(&p, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| io_err(&p, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Compute a model file's identity; `tlsh` adds the fuzzy hash (dequantizes every tensor).
/// Load the model at `path` and fingerprint its file (without TLSH), the hashing on a second
/// thread while this one loads: both are single-threaded work on the same file.
pub fn load_identified(
    path: &Path,
    opts: crate::model::LoadOptions,
) -> Result<(crate::model::Model, Identity), ModelError> {
    std::thread::scope(|scope| {
        let hashing = scope.spawn(|| fingerprint(path, false));
        let model = crate::model::Model::load(&path.display().to_string(), opts);
        let identity = hashing.join().expect("the hashing thread does not panic");
        Ok((model?, identity?))
    })
}

/// Fingerprint a model file (TLSH too when asked).
pub fn fingerprint(path: &Path, tlsh: bool) -> Result<Identity, ModelError> {
    if crate::model::hf::is_hf_folder(path) {
        return folder_fingerprint(path, tlsh);
    }
    let p = path.display().to_string();
    let g = GgufFile::open(path)?;
    let cfg = g.config()?;
    let tokenizer = g.tokenizer()?;
    let (tokenizer_hash, vocab_hash) = (tokenizer.hash.clone(), tokenizer.vocab_hash());
    let config_hash = config_hash(&cfg);
    let mut names: Vec<&String> = g.content.tensor_infos.keys().collect();
    names.sort();
    let mut file = std::fs::File::open(path).map_err(|e| io_err(&p, e))?;
    let mut h = Sha256::new();
    h.update(WEIGHT_TAG);
    let mut parameters = 0u64;
    let mut buf = Vec::new();
    for name in &names {
        let info = &g.content.tensor_infos[*name];
        let elems = info.shape.elem_count();
        parameters += elems as u64;
        let bytes = elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        buf.resize(bytes, 0);
        file.seek(SeekFrom::Start(g.content.tensor_data_offset + info.offset))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| io_err(&p, e))?;
        let dtype = format!("{:?}", info.ggml_dtype);
        hash_tensor(&mut h, name, &dtype, info.shape.dims(), &buf);
    }
    let weight_hash = hex::encode(h.finalize());
    let tlsh = if tlsh { Some(weight_tlsh(path)?) } else { None };
    Ok(Identity {
        path: p,
        arch: cfg.arch.name().into(),
        file_bytes: std::fs::metadata(path)
            .map_err(|e| io_err(&path.display().to_string(), e))?
            .len(),
        parameters,
        vocab_size: cfg.vocab_size,
        file_sha256: sha256_file(path)?,
        weight_hash,
        config_hash,
        tokenizer_hash,
        vocab_hash,
        tlsh,
    })
}

/// The identity of a Hugging Face folder. `file_sha256` is SHA-256 over the sorted list of
/// (file name, SHA-256 of the file) of its config, tokenizer and weight files; the weight hash
/// follows the same canonical definition as for GGUF (tensors sorted by name, each with name,
/// dtype, shape and stored bytes), under the folder's own tensor names.
fn folder_fingerprint(dir: &Path, tlsh: bool) -> Result<Identity, ModelError> {
    let folder = crate::model::hf::HfFolder::open(dir)?;
    let cfg = folder.config()?;
    let tokenizer = folder.tokenizer()?;
    let (tokenizer_hash, vocab_hash) = (tokenizer.hash.clone(), tokenizer.vocab_hash());
    let config_hash = config_hash(&cfg);
    let mut h = Sha256::new();
    h.update(WEIGHT_TAG);
    let mut parameters = 0u64;
    let mut sig = Vec::new();
    for (name, dtype, shape, bytes) in folder.raw_tensors() {
        hash_tensor(&mut h, &name, &dtype, &shape, bytes);
        // An MLX layer's packed weight counts (and is signed) as its values; its scales and
        // biases are part of it.
        let Some(count) = folder.value_count(&name, &shape)? else {
            continue;
        };
        parameters += count;
        if tlsh {
            let Some(values) = folder.values(&name)? else {
                continue;
            };
            let shape = values.dims().to_vec();
            let v: Vec<f32> = values
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(|e| ModelError::Corrupt {
                    path: dir.display().to_string(),
                    reason: format!("tensor {name}: {e}"),
                })?;
            sign_tensor(&mut sig, &name, &shape, &v);
        }
    }
    let weight_hash = hex::encode(h.finalize());
    let mut files: Vec<std::path::PathBuf> = folder.files().to_vec();
    files.extend(
        ["config.json", "tokenizer.json", "tokenizer_config.json"]
            .iter()
            .map(|f| dir.join(f))
            .filter(|f| f.is_file()),
    );
    files.sort();
    let mut fh = Sha256::new();
    let mut file_bytes = 0u64;
    for f in &files {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        fh.update(name.unwrap_or_default().as_bytes());
        fh.update(sha256_file(f)?.as_bytes());
        file_bytes += std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
    }
    Ok(Identity {
        path: dir.display().to_string(),
        arch: cfg.arch.name().into(),
        file_bytes,
        parameters,
        vocab_size: cfg.vocab_size,
        file_sha256: hex::encode(fh.finalize()),
        weight_hash,
        config_hash,
        tokenizer_hash,
        vocab_hash,
        tlsh: if tlsh {
            Some(tlsh_of(dir, &sig)?)
        } else {
            None
        },
    })
}

/// SHA-256 of the hyper-parameters as canonical JSON.
fn config_hash(cfg: &crate::model::Config) -> String {
    let json = serde_json::to_value(cfg).expect("the config serializes");
    hex::encode(Sha256::digest(json.to_string().as_bytes()))
}

/// Feed one tensor into the canonical weight hash: length-prefixed name, dtype, shape, bytes.
fn hash_tensor(h: &mut Sha256, name: &str, dtype: &str, shape: &[usize], bytes: &[u8]) {
    h.update((name.len() as u64).to_be_bytes());
    h.update(name.as_bytes());
    h.update((dtype.len() as u64).to_be_bytes());
    h.update(dtype.as_bytes());
    h.update((shape.len() as u64).to_be_bytes());
    for d in shape {
        h.update((*d as u64).to_be_bytes());
    }
    h.update((bytes.len() as u64).to_be_bytes());
    h.update(bytes);
}

/// The byte signature of the weights that TLSH hashes: for each tensor in name order,
/// [`SHAPE_BYTES`] bytes of a digest of its name and shape, then up to
/// [`SIGNATURE_SAMPLES`] values at fixed strided positions, each mapped to
/// `round(v / σ · 4)` clamped to ±12 (σ: the tensor's RMS), as one byte.
pub fn weight_signature(path: &Path) -> Result<Vec<u8>, ModelError> {
    let mut g = GgufFile::open(path)?;
    let mut names: Vec<String> = g.content.tensor_infos.keys().cloned().collect();
    names.sort();
    let mut sig = Vec::new();
    for name in names {
        let t = g.tensor(&name)?;
        let v: Vec<f32> = t
            .dequantize(&Device::Cpu)
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.to_vec1())
            .map_err(|e| ModelError::Corrupt {
                path: path.display().to_string(),
                reason: format!("tensor {name}: {e}"),
            })?;
        let shape = g.content.tensor_infos[&name].shape.dims().to_vec();
        sign_tensor(&mut sig, &name, &shape, &v);
    }
    Ok(sig)
}

/// TLSH (128 buckets, 1-byte checksum) of [`weight_signature`].
pub fn weight_tlsh(path: &Path) -> Result<String, ModelError> {
    tlsh_of(path, &weight_signature(path)?)
}

/// Append one tensor's part of the signature (see [`weight_signature`]).
fn sign_tensor(sig: &mut Vec<u8>, name: &str, shape: &[usize], v: &[f32]) {
    if v.is_empty() {
        return;
    }
    // The tensor's name and shape first, as bytes of their digest: models of other
    // architectures or sizes differ here already, re-encodings of one model never do.
    let head = Sha256::digest(format!("{name}{shape:?}").as_bytes());
    sig.extend_from_slice(&head[..SHAPE_BYTES]);
    let rms = (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64).sqrt() as f32;
    let step = (v.len() / SIGNATURE_SAMPLES).max(1);
    for x in v.iter().step_by(step).take(SIGNATURE_SAMPLES) {
        let b = if rms > 0.0 {
            (x / rms * BUCKETS_PER_SIGMA).round().clamp(-12.0, 12.0)
        } else {
            0.0
        };
        sig.push((b as i32 + 128) as u8);
    }
}

/// TLSH of a signature; `path` names the model in errors.
fn tlsh_of(path: &Path, sig: &[u8]) -> Result<String, ModelError> {
    let t = tlsh2::TlshDefaultBuilder::build_from(sig).ok_or_else(|| ModelError::Corrupt {
        path: path.display().to_string(),
        reason: "too few or too uniform weights for a TLSH hash".into(),
    })?;
    Ok(String::from_utf8_lossy(&t.hash()).into_owned())
}

/// TLSH distance between two hashes (0: identical; above ~100: unrelated), or `None` when
/// either is not a TLSH hash.
pub fn tlsh_distance(a: &str, b: &str) -> Option<i32> {
    let a: tlsh2::TlshDefault = a.parse().ok()?;
    let b: tlsh2::TlshDefault = b.parse().ok()?;
    Some(a.diff(&b, true))
}
