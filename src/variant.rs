//! Derived models: what a cheaper substitute of a model would look like.
//!
//! `derive(source, options, out)` writes a GGUF holding the source's metadata and tokenizer
//! with every matrix re-encoded at one rung of the quantization ladder ([`Target::LADDER`]:
//! `f16`, `bf16`, `q8_0`, `q6_k`, `q5_k`, `q5_0`, `q4_k`, `q4_0`, `q3_k`, `q2_k`), optionally
//! with layers pruned or Gaussian noise added first. Every output is a GGUF llama.cpp loads.
//! Auditors use it to see what a run can catch (`pot calibrate`); the tests use it to make
//! substitutes of real models.
//!
//! Quantization works on blocks of 32 (legacy types) or 256 (k-quants) values along a row.
//! A matrix whose rows are not a multiple of a k-quant's 256 (SmolLM2's 576 columns, Qwen
//! 0.5B's 896) gets llama.cpp's fallback type for it, as `llama-quantize` does (q4_k → q5_0,
//! q6_k → q8_0, ...; [`row_fallback`]); one whose rows split into no block at all is
//! quantized over its flattened values and stored dequantized as f16 (the numbers are those of
//! the quantization, only the container differs). 1-D tensors (norms, biases) stay f32.
//!
//! The output is written to a temporary file beside `out` and renamed into place, so a failed
//! or killed run leaves no half-written model.

use std::io::{BufWriter, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};

use crate::model::gguf::GgufFile;
use crate::model::ModelError;

/// Target encodings: the rungs of a quantization ladder, from lossless to 2-bit. Every one is
/// a GGUF type llama.cpp reads; the names are llama.cpp's (`llama-quantize` type names, lower
/// case). Each matrix gets the one type ("pure" in llama-quantize's words: no per-tensor mix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Half precision: lossless for 4- and 8-bit sources up to f16 rounding.
    F16,
    /// bfloat16: 8 bits of mantissa, the exponent range of f32.
    #[serde(rename = "bf16")]
    Bf16,
    /// 8-bit blocks of 32.
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 6-bit k-quant (blocks of 256).
    #[serde(rename = "q6_k")]
    Q6K,
    /// 5-bit k-quant (blocks of 256).
    #[serde(rename = "q5_k")]
    Q5K,
    /// 5-bit blocks of 32.
    #[serde(rename = "q5_0")]
    Q5_0,
    /// 4-bit k-quant (blocks of 256).
    #[serde(rename = "q4_k")]
    Q4K,
    /// 4-bit blocks of 32.
    #[serde(rename = "q4_0")]
    Q4_0,
    /// 3-bit k-quant (blocks of 256).
    #[serde(rename = "q3_k")]
    Q3K,
    /// 2-bit k-quant (blocks of 256).
    #[serde(rename = "q2_k")]
    Q2K,
}

impl Target {
    /// The whole ladder, from the most precise rung to the least.
    pub const LADDER: [Target; 10] = [
        Target::F16,
        Target::Bf16,
        Target::Q8_0,
        Target::Q6K,
        Target::Q5K,
        Target::Q5_0,
        Target::Q4K,
        Target::Q4_0,
        Target::Q3K,
        Target::Q2K,
    ];

    /// The GGUF type every matrix is written as.
    pub fn dtype(self) -> GgmlDType {
        match self {
            Target::F16 => GgmlDType::F16,
            Target::Bf16 => GgmlDType::BF16,
            Target::Q8_0 => GgmlDType::Q8_0,
            Target::Q6K => GgmlDType::Q6K,
            Target::Q5K => GgmlDType::Q5K,
            Target::Q5_0 => GgmlDType::Q5_0,
            Target::Q4K => GgmlDType::Q4K,
            Target::Q4_0 => GgmlDType::Q4_0,
            Target::Q3K => GgmlDType::Q3K,
            Target::Q2K => GgmlDType::Q2K,
        }
    }

    /// llama.cpp's name of the type (`q4_k`, `bf16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Target::F16 => "f16",
            Target::Bf16 => "bf16",
            Target::Q8_0 => "q8_0",
            Target::Q6K => "q6_k",
            Target::Q5K => "q5_k",
            Target::Q5_0 => "q5_0",
            Target::Q4K => "q4_k",
            Target::Q4_0 => "q4_0",
            Target::Q3K => "q3_k",
            Target::Q2K => "q2_k",
        }
    }

    /// Bits per weight of the encoding (block scales included).
    pub fn bits_per_weight(self) -> f64 {
        let d = self.dtype();
        d.type_size() as f64 * 8.0 / d.block_size() as f64
    }
}

impl crate::Named for Target {
    const ALL: &'static [Self] = &Target::LADDER;

    fn name(self) -> &'static str {
        Target::name(self)
    }

    fn about(self) -> &'static str {
        match self {
            Target::F16 => "half precision: lossless for 4- and 8-bit sources up to f16 rounding",
            Target::Bf16 => "bfloat16: 8 bits of mantissa, the exponent range of f32",
            Target::Q8_0 => "8-bit blocks of 32",
            Target::Q6K => "6-bit k-quant (blocks of 256)",
            Target::Q5K => "5-bit k-quant (blocks of 256)",
            Target::Q5_0 => "5-bit blocks of 32",
            Target::Q4K => "4-bit k-quant (blocks of 256)",
            Target::Q4_0 => "4-bit blocks of 32",
            Target::Q3K => "3-bit k-quant (blocks of 256)",
            Target::Q2K => "2-bit k-quant (blocks of 256)",
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How to derive the variant.
#[derive(Clone, Debug)]
pub struct VariantOptions {
    /// Encoding of every matrix.
    pub to: Target,
    /// Drop this many transformer blocks (those just before the last one).
    pub prune_layers: usize,
    /// Add Gaussian noise of this many RMS units to every matrix before encoding.
    pub noise: f64,
    /// Seed of the noise.
    pub seed: u64,
}

/// What went wrong deriving a variant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VariantError {
    /// Reading the source model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Options that cannot apply to this model.
    #[error("{0}")]
    Options(String),
    /// Writing the output.
    #[error("{path}: cannot write ({source}); check the folder exists and is writable")]
    Write {
        /// Output path.
        path: String,
        /// The OS error (or, from candle's GGUF writer, its message as one).
        #[source]
        source: std::io::Error,
    },
}

fn candle_err(path: &str, e: candle_core::Error) -> VariantError {
    VariantError::Model(ModelError::Corrupt {
        path: path.to_string(),
        reason: crate::model::candle_message(&e),
    })
}

/// Gaussian noise by Box–Muller (reproducible from the seed).
fn add_noise(
    t: &Tensor,
    sigma_rms: f64,
    rng: &mut rand::rngs::StdRng,
) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
    let rms = (v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len().max(1) as f64).sqrt();
    let s = sigma_rms * rms;
    let noisy: Vec<f32> = v
        .iter()
        .map(|x| {
            let u1: f64 = rng.gen::<f64>().max(f64::MIN_POSITIVE);
            let u2: f64 = rng.gen();
            let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
            (*x as f64 + s * z) as f32
        })
        .collect();
    Tensor::from_vec(noisy, t.shape(), &Device::Cpu)
}

/// The type llama.cpp's quantizer writes for a matrix whose rows do not split into blocks of
/// 256 when asked for a k-quant (`llama-quant.cpp`, "incompatible tensor" fallbacks): q6_k →
/// q8_0, q5_k → q5_1, q4_k → q5_0, and q3_k / q2_k → iq4_nl, which candle cannot write, so
/// q4_0 (the same 4.5 bits per weight, a little less accurate) stands in for it.
fn row_fallback(dtype: GgmlDType) -> GgmlDType {
    match dtype {
        GgmlDType::Q6K => GgmlDType::Q8_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q3K | GgmlDType::Q2K => GgmlDType::Q4_0,
        other => other,
    }
}

/// Encode one dense matrix as `dtype`: as llama.cpp would, with its fallback type for rows
/// that do not split into a k-quant's blocks (see the module doc for rows that split into no
/// block at all).
fn encode(t: &Tensor, dtype: GgmlDType) -> candle_core::Result<QTensor> {
    let cols = *t.dims().last().unwrap_or(&0);
    let dtype = if cols.is_multiple_of(dtype.block_size()) {
        dtype
    } else {
        row_fallback(dtype)
    };
    let block = dtype.block_size();
    if cols.is_multiple_of(block) {
        return QTensor::quantize(t, dtype);
    }
    let n = t.elem_count();
    if !n.is_multiple_of(block) {
        // Not even the flattened matrix splits into blocks: keep full precision.
        return QTensor::quantize(t, GgmlDType::F16);
    }
    let flat = t.flatten_all()?.reshape((n / block, block))?;
    let round_trip = QTensor::quantize(&flat, dtype)?.dequantize(&Device::Cpu)?;
    QTensor::quantize(&round_trip.reshape(t.shape())?, GgmlDType::F16)
}

/// Write the variant of `source` described by `opts` to `out`.
pub fn derive(source: &Path, opts: &VariantOptions, out: &Path) -> Result<(), VariantError> {
    let src = source.display().to_string();
    let outp = out.display().to_string();
    if let (Ok(a), Ok(b)) = (source.canonicalize(), out.canonicalize()) {
        if a == b {
            return Err(VariantError::Options(format!(
                "{outp}: output is the input model; choose another -o path"
            )));
        }
    }
    let mut g = GgufFile::open(source)?;
    let cfg = g.config()?;
    let arch = cfg.arch.name();
    if opts.prune_layers >= cfg.n_layer.saturating_sub(1) {
        return Err(VariantError::Options(format!(
            "--prune-layers {} leaves no layer: {src} has {} blocks; prune at most {}",
            opts.prune_layers,
            cfg.n_layer,
            cfg.n_layer.saturating_sub(2)
        )));
    }
    if !(opts.noise >= 0.0 && opts.noise.is_finite()) {
        return Err(VariantError::Options(format!(
            "--noise {} must be a non-negative number",
            opts.noise
        )));
    }
    // Blocks [n-1-prune, n-2] are dropped; the rest are renumbered in order.
    let first_dropped = cfg.n_layer - 1 - opts.prune_layers;
    let renumber = |name: &str| -> Option<String> {
        let rest = name.strip_prefix("blk.")?;
        let (idx, tail) = rest.split_once('.')?;
        let i: usize = idx.parse().ok()?;
        if i >= first_dropped && i < cfg.n_layer - 1 {
            return Some(String::new()); // dropped
        }
        let j = if i >= first_dropped {
            i - opts.prune_layers
        } else {
            i
        };
        Some(format!("blk.{j}.{tail}"))
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut names: Vec<String> = g.content.tensor_infos.keys().cloned().collect();
    names.sort();
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for name in names {
        let new_name = match renumber(&name) {
            Some(n) if n.is_empty() => continue,
            Some(n) => n,
            None => name.clone(),
        };
        let q = g.tensor(&name)?;
        let dense = q
            .dequantize(&Device::Cpu)
            .map_err(|e| candle_err(&src, e))?;
        let qt = if dense.rank() < 2 {
            QTensor::quantize(&dense, GgmlDType::F32)
        } else {
            let dense = if opts.noise > 0.0 {
                add_noise(&dense, opts.noise, &mut rng).map_err(|e| candle_err(&src, e))?
            } else {
                dense
            };
            encode(&dense, opts.to.dtype())
        }
        .map_err(|e| candle_err(&src, e))?;
        tensors.push((new_name, qt));
    }
    let mut metadata: Vec<(String, Value)> = g
        .content
        .metadata
        .iter()
        .filter(|(k, _)| k.as_str() != "general.file_type")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // Keys this writes anew (a source made by pot variant has them already: GGUF readers such
    // as llama.cpp refuse a file with a key twice).
    metadata.retain(|(k, _)| k != &format!("{arch}.block_count") && k != "pot.variant");
    metadata.push((
        format!("{arch}.block_count"),
        Value::U32((cfg.n_layer - opts.prune_layers) as u32),
    ));
    metadata.push((
        "pot.variant".into(),
        Value::String(format!(
            "to={} prune_layers={} noise={} seed={}",
            opts.to, opts.prune_layers, opts.noise, opts.seed
        )),
    ));
    metadata.sort_by(|a, b| a.0.cmp(&b.0));
    let md_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let write_err = |source: std::io::Error| VariantError::Write {
        path: outp.clone(),
        source,
    };
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile_in(dir).map_err(write_err)?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        candle_core::quantized::gguf_file::write(&mut w, &md_refs, &t_refs)
            .map_err(|e| write_err(std::io::Error::other(crate::model::candle_message(&e))))?;
        w.flush().map_err(write_err)?;
    }
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(out).map_err(write_err)?;
    Ok(())
}

/// A temporary file that is removed unless persisted.
pub struct TempFile {
    file: std::fs::File,
    path: std::path::PathBuf,
    keep: bool,
}

impl TempFile {
    /// The open file.
    pub fn as_file(&self) -> &std::fs::File {
        &self.file
    }
    /// Rename into place.
    pub fn persist(mut self, to: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, to)?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Create a fresh temporary file in `dir` (same filesystem as the destination, so the final
/// rename is atomic).
pub fn tempfile_in(dir: &Path) -> std::io::Result<TempFile> {
    for _ in 0..16 {
        let path = dir.join(format!(".pot-tmp-{:016x}", rand::random::<u64>()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => {
                return Ok(TempFile {
                    file,
                    path,
                    keep: false,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("could not create a temporary file"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-gemma3.gguf")
    }

    /// The metadata key count a GGUF header declares, and the distinct keys it holds.
    fn keys(path: &Path) -> (u64, usize) {
        let bytes = std::fs::read(path).unwrap();
        let declared = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
        let g = GgufFile::open(path).unwrap();
        (declared, g.content.metadata.len())
    }

    #[test]
    fn a_variant_of_a_variant_writes_each_metadata_key_once() {
        // llama.cpp refuses a GGUF that holds a key twice; a rung made from a reference that
        // pot variant wrote (an f16 of a quantized file) must not repeat pot.variant.
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a.gguf"), d.path().join("b.gguf"));
        let opts = |to| VariantOptions {
            to,
            prune_layers: 0,
            noise: 0.0,
            seed: 0,
        };
        derive(&fixture(), &opts(Target::F16), &a).unwrap();
        derive(&a, &opts(Target::Q4_0), &b).unwrap();
        for f in [&a, &b] {
            let (declared, distinct) = keys(f);
            assert_eq!(declared as usize, distinct, "{}", f.display());
        }
    }

    #[test]
    fn every_rung_writes_a_model_pot_loads() {
        let d = tempfile::tempdir().unwrap();
        for rung in Target::LADDER {
            let out = d.path().join(format!("{rung}.gguf"));
            derive(
                &fixture(),
                &VariantOptions {
                    to: rung,
                    prune_layers: 0,
                    noise: 0.0,
                    seed: 0,
                },
                &out,
            )
            .unwrap();
            let m = crate::model::Model::load(&out.display().to_string(), Default::default())
                .unwrap_or_else(|e| panic!("{rung}: {e}"));
            let lp = m.logprobs(&[1, 5, 9, 14], 0).unwrap();
            assert!(lp.iter().flatten().all(|v| v.is_finite()), "{rung}");
        }
    }
}
