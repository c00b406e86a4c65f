//! Hugging Face folders: `config.json`, `tokenizer.json` and `*.safetensors` of the same
//! decoder families as the GGUF files (llama, qwen2, qwen3).
//!
//! Hugging Face checkpoints store weights unquantized (f32, f16 or bf16): f16 and bf16 stay
//! 16-bit under [`Kernels::Quantized`] (pot's 16-bit kernel), everything is widened to f32
//! under [`Kernels::Dense`]. MLX checkpoints are such folders with affine-quantized layers
//! ([`super::mlx`]). The layouts differ from GGUF in two ways that
//! matter: tensor names, and Llama's query/key rows, which llama.cpp's converter permutes so
//! that GGUF Llama uses interleaved RoPE while Hugging Face Llama uses NeoX-style RoPE.
//! [`export`] writes a GGUF model as such a folder (undoing that permutation), which is how
//! the tests check this loader against the GGUF path on real weights.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::arch::{block, Arch};
use super::decoder::{Block, Config, Decoder, Embedding, GemmaConfig, Linear, RmsNorm, RopeStyle};
use super::gguf::GgufFile;
use super::half::HalfMatrix;
use super::layers::MappedRows;
use super::mapped::{Mapped, MappedFile};
use super::mlx::{self, Quantization};
use super::q8::Product;
use super::q8::Q8Matrix;
use super::tokenizer::Tokenizer;
use super::{Kernels, ModelError};

/// Whether `dir` looks like a Hugging Face model folder.
pub fn is_hf_folder(dir: &Path) -> bool {
    dir.is_dir() && dir.join("config.json").is_file()
}

/// An opened Hugging Face folder.
pub struct HfFolder {
    dir: PathBuf,
    config_json: Value,
    files: Vec<PathBuf>,
    st: MmapedSafetensors,
    /// Every stored tensor's bytes in pot's own maps of the files (empty with `POT_MMAP=0`):
    /// what 16-bit matrices and embedding tables are read in place from.
    in_place: HashMap<String, Mapped>,
    /// config.json's quantization, parsed on first use.
    quant: std::sync::OnceLock<Option<Quantization>>,
}

/// The tensors of a mapped safetensors file: name → its data's byte range in the file
/// (`None` if the header is not what the format prescribes; candle's reader, which opened
/// the same files first, reports that).
fn safetensors_ranges(map: &MappedFile) -> Option<Vec<(String, Mapped)>> {
    let len = map.slice(0..8)?;
    let n = usize::try_from(u64::from_le_bytes(len[..8].try_into().ok()?)).ok()?;
    let base = n.checked_add(8)?;
    let header: Value = serde_json::from_slice(&map.slice(8..base)?).ok()?;
    header
        .as_object()?
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(name, t)| {
            let o = t.get("data_offsets")?.as_array()?;
            let (a, b) = (o.first()?.as_u64()?, o.get(1)?.as_u64()?);
            let (a, b) = (usize::try_from(a).ok()?, usize::try_from(b).ok()?);
            Some((
                name.clone(),
                map.slice(base.checked_add(a)?..base.checked_add(b)?)?,
            ))
        })
        .collect()
}

/// GGUF tensor name → Hugging Face name in a model of family `arch` (`None`: not one of its
/// tensors).
pub fn hf_name(arch: Arch, gguf: &str) -> Option<String> {
    let top = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (part, kind) = rest.rsplit_once('.')?;
    let names = arch.block_tensors().into_iter().find(|n| n.gguf == part)?;
    Some(format!("model.layers.{layer}.{}.{kind}", names.hf))
}

fn open_err(path: &Path, e: std::io::Error) -> ModelError {
    ModelError::Open {
        path: path.display().to_string(),
        source: e,
    }
}

fn write_err(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Write {
        path: path.display().to_string(),
        source,
    }
}

fn corrupt(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::Corrupt {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl HfFolder {
    /// Open a folder: read `config.json` and map every `*.safetensors` file.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| open_err(&cfg_path, e))?;
        let config_json: Value = serde_json::from_str(&text)
            .map_err(|e| corrupt(&cfg_path, format!("not JSON ({e})")))?;
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| open_err(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ModelError::NotFound {
                spec: dir.display().to_string(),
                reason: "folder has config.json but no *.safetensors weights".into(),
            });
        }
        // SAFETY: the files are mapped read-only; pot never writes them while mapped.
        let st = unsafe { MmapedSafetensors::multi(&files) }
            .map_err(|e| corrupt(dir, format!("safetensors: {e}")))?;
        let mut in_place = HashMap::new();
        if super::mapped::enabled() {
            for f in &files {
                let file = std::fs::File::open(f).map_err(|e| open_err(f, e))?;
                let map = MappedFile::open(&file, f).map_err(|e| open_err(f, e))?;
                let tensors = safetensors_ranges(&map)
                    .ok_or_else(|| corrupt(f, "safetensors header is not readable"))?;
                in_place.extend(tensors);
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            config_json,
            files,
            st,
            in_place,
            quant: std::sync::OnceLock::new(),
        })
    }

    fn key_usize(&self, key: &str) -> Option<usize> {
        self.config_json.get(key)?.as_u64().map(|v| v as usize)
    }

    fn need_usize(&self, key: &str) -> Result<usize, ModelError> {
        self.key_usize(key).ok_or_else(|| ModelError::MissingKey {
            path: self.dir.join("config.json").display().to_string(),
            key: key.into(),
        })
    }

    /// The architecture hyper-parameters.
    pub fn config(&self) -> Result<Config, ModelError> {
        let model_type = self
            .config_json
            .get("model_type")
            .and_then(Value::as_str)
            .unwrap_or("");
        let arch = Arch::from_hf(model_type).map_err(|arch| ModelError::UnsupportedArch {
            path: self.dir.join("config.json").display().to_string(),
            arch,
        })?;
        let rope_scaling = self
            .config_json
            .get("rope_scaling")
            .filter(|v| !v.is_null());
        let linear_factor = rope_scaling
            .filter(|v| v.get("rope_type").and_then(Value::as_str) == Some("linear"))
            .and_then(|v| v.get("factor"))
            .and_then(Value::as_f64);
        if rope_scaling.is_some() && !(arch.linear_rope_scaling() && linear_factor.is_some()) {
            return Err(ModelError::UnsupportedArch {
                path: self.dir.join("config.json").display().to_string(),
                arch: format!("{arch} with rope_scaling (not implemented)"),
            });
        }
        let d_model = self.need_usize("hidden_size")?;
        let n_head = self.need_usize("num_attention_heads")?;
        let n_kv_head = self.key_usize("num_key_value_heads").unwrap_or(n_head);
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(corrupt(
                &self.dir.join("config.json"),
                format!("{n_kv_head} key/value heads do not divide {n_head} query heads"),
            ));
        }
        let f = |k: &str, d: f64| self.config_json.get(k).and_then(Value::as_f64).unwrap_or(d);
        let tied = match self.config_json.get("tie_word_embeddings") {
            None if arch.hf_tied_by_default() => true,
            Some(v) => v.as_bool().unwrap_or(false),
            None => self.st.get("lm_head.weight").is_err(),
        };
        let cfg = Config {
            n_layer: self.need_usize("num_hidden_layers")?,
            d_model,
            n_head,
            n_kv_head,
            head_dim: self.key_usize("head_dim").unwrap_or(d_model / n_head),
            d_ff: self.need_usize("intermediate_size")?,
            vocab_size: self.need_usize("vocab_size")?,
            rms_eps: f("rms_norm_eps", 1e-6),
            rope_base: f("rope_theta", 10_000.0),
            rope_style: RopeStyle::Neox,
            context_length: self.key_usize("max_position_embeddings").unwrap_or(4096),
            tied_embeddings: tied,
            gemma: if arch == Arch::Gemma3 {
                let head_dim = self.key_usize("head_dim").unwrap_or(d_model / n_head);
                let scalar = f("query_pre_attn_scalar", head_dim as f64);
                Some(GemmaConfig {
                    attn_scale: 1.0 / scalar.sqrt(),
                    sliding_window: self.need_usize("sliding_window")?,
                    swa_pattern: self.key_usize("sliding_window_pattern").unwrap_or(6),
                    rope_local_base: f("rope_local_base_freq", 10_000.0),
                    rope_scale: 1.0 / linear_factor.unwrap_or(1.0),
                })
            } else {
                None
            },
            arch,
        };
        match cfg.implausible() {
            Some(why) => Err(corrupt(&self.dir.join("config.json"), why)),
            None => Ok(cfg),
        }
    }

    /// One tensor as f32.
    pub fn tensor(&self, name: &str) -> Result<Tensor, ModelError> {
        if self.st.get(name).is_err() {
            return Err(ModelError::MissingTensor {
                path: self.dir.display().to_string(),
                name: name.to_string(),
            });
        }
        self.st
            .load(name, &Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| corrupt(&self.dir, format!("tensor {name}: {e}")))
    }

    /// Every tensor's name, dtype, shape and stored bytes, sorted by name (identity).
    pub fn raw_tensors(&self) -> Vec<(String, String, Vec<usize>, &[u8])> {
        let mut v: Vec<_> = self
            .st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, format!("{:?}", t.dtype()), t.shape().to_vec()))
            .collect();
        v.sort();
        v.into_iter()
            .filter_map(|(n, d, s)| {
                let view = self.st.get(&n).ok()?;
                Some((n, d, s, view.data()))
            })
            .collect()
    }

    /// The weight files, sorted.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// `chat_template` from `tokenizer_config.json` (a string, or the entry named "default"
    /// of a list), when there is one.
    pub fn chat_template(&self) -> Option<String> {
        let tc: Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.join("tokenizer_config.json")).ok()?,
        )
        .ok()?;
        match tc.get("chat_template")? {
            Value::String(s) => Some(s.clone()),
            Value::Array(a) => a
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        }
    }

    /// The tokenizer from `tokenizer.json` (BOS from `tokenizer_config.json`'s
    /// `add_bos_token`, end ids from `config.json`).
    pub fn tokenizer(&self) -> Result<Tokenizer, ModelError> {
        let path = self.dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| {
            ModelError::UnsupportedTokenizer {
                path: path.display().to_string(),
                what: format!("tokenizer.json could not be read ({e})"),
            }
        })?;
        let tc: Value = std::fs::read_to_string(self.dir.join("tokenizer_config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let id = |v: Option<&Value>| v.and_then(Value::as_u64).map(|x| x as u32);
        let bos = id(self.config_json.get("bos_token_id"));
        let add_bos = tc
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let eos: Vec<u32> = match self.config_json.get("eos_token_id") {
            Some(Value::Array(a)) => a.iter().filter_map(|v| id(Some(v))).collect(),
            v => id(v).into_iter().collect(),
        };
        let bos = if add_bos { bos } else { None };
        let hash = super::tokenizer::pipeline_hash(&inner, bos, &eos)?;
        Ok(Tokenizer::from_parts(inner, bos, eos, hash))
    }

    /// An RMSNorm weight; Gemma stores `w` and multiplies by `1 + w` (GGUF stores `1 + w`).
    fn norm(&self, name: &str, cfg: &Config) -> Result<RmsNorm, ModelError> {
        let w = self.tensor(name)?;
        let w = if cfg.arch.hf_norm_plus_one() {
            (w + 1.0).map_err(|e| corrupt(&self.dir, e))?
        } else {
            w
        };
        Ok(RmsNorm::new(w, cfg.rms_eps))
    }

    /// The quantization `config.json` declares (MLX checkpoints), if any.
    pub fn quantization(&self) -> Result<Option<&Quantization>, ModelError> {
        if let Some(q) = self.quant.get() {
            return Ok(q.as_ref());
        }
        let q = Quantization::from_config(&self.config_json, &self.dir.join("config.json"))?;
        Ok(self.quant.get_or_init(|| q).as_ref())
    }

    /// The raw view of a stored tensor.
    fn view(&self, name: &str) -> Result<safetensors::tensor::TensorView<'_>, ModelError> {
        self.st.get(name).map_err(|_| ModelError::MissingTensor {
            path: self.dir.display().to_string(),
            name: name.to_string(),
        })
    }

    /// The weight matrix of layer `module` (its name without `.weight`), held for `kernels`:
    /// MLX's affine quants on pot's Q4_1 kernel, f16/bf16 on pot's 16-bit kernel, f32 as is;
    /// everything widened to f32 under [`Kernels::Dense`].
    fn matrix(
        &self,
        module: &str,
        quant: Option<&Quantization>,
        kernels: Kernels,
    ) -> Result<Matrix, ModelError> {
        let wname = format!("{module}.weight");
        let sname = format!("{module}.scales");
        if self.st.get(&sname).is_ok() {
            let err = |why: String| mlx::shape_error(&self.dir, module, why);
            let scheme = quant.and_then(|q| q.scheme(module)).ok_or_else(|| {
                err("has scales, but config.json declares no quantization for it".into())
            })?;
            let view = self.view(&wname)?;
            let (n, words) = match (view.dtype(), view.shape()) {
                (safetensors::Dtype::U32, &[n, w]) => (n, w),
                (dt, shape) => {
                    return Err(err(format!(
                        "packed weight is {dt:?} {shape:?}, not a uint32 matrix"
                    )))
                }
            };
            if (words * 32) % scheme.bits as usize != 0 {
                return Err(err(format!(
                    "{words} words do not hold whole {}-bit values",
                    scheme.bits
                )));
            }
            let k = words * 32 / scheme.bits as usize;
            let vec = |name: &str| -> Result<Vec<f32>, ModelError> {
                let t = self.tensor(&format!("{module}.{name}"))?;
                let dims = t.dims().to_vec();
                if dims != [n, k / scheme.group] {
                    return Err(err(format!(
                        "{name} are {dims:?}, not [{n}, {}] for {k} inputs in groups of {}",
                        k / scheme.group,
                        scheme.group
                    )));
                }
                t.flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|e| corrupt(&self.dir, e))
            };
            let (scales, biases) = (vec("scales")?, vec("biases")?);
            let m = mlx::matrix(view.data(), n, k, scheme, &scales, &biases).ok_or_else(|| {
                err(format!(
                    "{n} × {k} at {} bits in groups of {} does not fit its tensors",
                    scheme.bits, scheme.group
                ))
            })?;
            return Ok(match kernels {
                Kernels::Quantized => Matrix::Affine(Arc::new(m)),
                Kernels::Dense => {
                    let ids: Vec<u32> = (0..n as u32).collect();
                    let rows = m.rows(&ids).map_err(|e| corrupt(&self.dir, e))?;
                    Matrix::Dense(
                        Tensor::from_vec(rows, (n, k), &Device::Cpu)
                            .map_err(|e| corrupt(&self.dir, e))?,
                    )
                }
            });
        }
        let view = self.view(&wname)?;
        let half = match view.dtype() {
            safetensors::Dtype::F16 => Some(GgmlDType::F16),
            safetensors::Dtype::BF16 => Some(GgmlDType::BF16),
            _ => None,
        };
        match (half, view.shape()) {
            (Some(dt), &[n, k]) if kernels == Kernels::Quantized => {
                // Read in place from the mapped file where it is mapped.
                if let Some(bytes) = self.in_place.get(&wname) {
                    if let (Some(_), Some(_)) = (
                        HalfMatrix::mapped(dt, n, k, bytes.clone()),
                        MappedRows::new(dt, n, k, bytes.clone()),
                    ) {
                        return Ok(Matrix::InPlace(dt, n, k, bytes.clone()));
                    }
                }
                // Read value by value: a safetensors header need not be padded (MLX's writer
                // does not pad it), so the 16-bit values may sit at odd addresses.
                let bits = view
                    .data()
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]));
                let storage = match dt {
                    GgmlDType::BF16 => QStorage::Cpu(Box::new(
                        bits.map(half::bf16::from_bits).collect::<Vec<_>>(),
                    )),
                    _ => {
                        QStorage::Cpu(Box::new(bits.map(half::f16::from_bits).collect::<Vec<_>>()))
                    }
                };
                let q = QTensor::new(storage, (n, k))
                    .map_err(|e| corrupt(&self.dir, format!("tensor {wname}: {e}")))?;
                Ok(Matrix::Half(q))
            }
            _ => Ok(Matrix::Dense(self.tensor(&wname)?)),
        }
    }

    /// What tensor `name` is to an MLX layer: part of a packed weight (its scales or biases),
    /// the packed weight of layer `module`, or a tensor of its own.
    fn part(&self, name: &str) -> Part {
        let packed = |module: &str| self.st.get(&format!("{module}.scales")).is_ok();
        let side = name
            .strip_suffix(".scales")
            .or_else(|| name.strip_suffix(".biases"));
        match (side, name.strip_suffix(".weight")) {
            (Some(m), _) if packed(m) => Part::ScalesOrBiases,
            (_, Some(m)) if packed(m) => Part::Packed(m.to_string()),
            _ => Part::Plain,
        }
    }

    /// How many values tensor `name` of `shape` holds as the model sees it: an MLX layer's
    /// packed weight its unpacked count, `None` for its scales and biases.
    pub fn value_count(&self, name: &str, shape: &[usize]) -> Result<Option<u64>, ModelError> {
        let n = shape.iter().product::<usize>() as u64;
        Ok(match self.part(name) {
            Part::ScalesOrBiases => None,
            Part::Packed(module) => {
                let bits = self.quantization()?.and_then(|q| q.scheme(&module));
                Some(bits.map_or(n, |s| n * 32 / s.bits as u64))
            }
            Part::Plain => Some(n),
        })
    }

    /// A tensor as the model's values: an MLX layer's packed `weight` dequantized to f32,
    /// `None` for its `scales` and `biases` (part of that weight), any other tensor as f32.
    pub fn values(&self, name: &str) -> Result<Option<Tensor>, ModelError> {
        match self.part(name) {
            Part::ScalesOrBiases => Ok(None),
            Part::Packed(module) => {
                match self.matrix(&module, self.quantization()?, Kernels::Dense)? {
                    Matrix::Dense(t) => Ok(Some(t)),
                    _ => unreachable!("dense kernels widen every matrix"),
                }
            }
            Part::Plain => self.tensor(name).map(Some),
        }
    }

    /// Assemble the decoder, its matrices held for `kernels`: MLX quants on pot's affine kernel,
    /// f16/bf16 on its 16-bit kernel, f32 as stored (all widened to f32 under dense kernels).
    pub fn decoder(&self, kernels: Kernels) -> Result<Decoder, ModelError> {
        let cfg = self.config()?;
        let quant = self.quantization()?;
        let map = |e: candle_core::Error| corrupt(&self.dir, super::candle_message(&e));
        let linear = |m: Matrix, bias: Option<Tensor>| -> Result<Linear, ModelError> {
            Ok(match m {
                Matrix::Dense(w) => Linear::from_dense(w, bias),
                Matrix::Affine(a) => Linear::from_product(Box::new(a), bias),
                Matrix::Half(q) => Linear::from_qtensor(q, bias, kernels).map_err(map)?,
                Matrix::InPlace(dt, n, k, b) => {
                    Linear::from_product(Matrix::in_place(dt, n, k, b), bias)
                }
            })
        };
        let (embed, tied_output) = match self.matrix("model.embed_tokens", quant, kernels)? {
            Matrix::Affine(a) => (Embedding::Affine(a.clone()), Matrix::Affine(a)),
            // Looked up as f32 rows; a tied output stays 16-bit on pot's 16-bit kernel, as
            // an untied one does (and as the in-place table below).
            Matrix::Half(q) => {
                let d = q.dequantize(&Device::Cpu).map_err(map)?;
                (Embedding::Dense(d), Matrix::Half(q))
            }
            Matrix::Dense(d) => (Embedding::Dense(d.clone()), Matrix::Dense(d)),
            Matrix::InPlace(dt, n, k, b) => (
                Embedding::Mapped(
                    MappedRows::new(dt, n, k, b.clone()).expect("checked when it was read"),
                ),
                Matrix::InPlace(dt, n, k, b),
            ),
        };
        let output = if cfg.tied_embeddings {
            linear(tied_output, None)?
        } else {
            linear(self.matrix("lm_head", quant, kernels)?, None)?
        };
        let norm = self.norm("model.norm.weight", &cfg)?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = format!("model.layers.{i}");
            let lin = |name: &str, bias: bool| -> Result<Linear, ModelError> {
                let w = self.matrix(&format!("{p}.{name}"), quant, kernels)?;
                let b = if bias {
                    Some(self.tensor(&format!("{p}.{name}.bias"))?)
                } else {
                    None
                };
                linear(w, b)
            };
            let norm_of = |name: &str| self.norm(&format!("{p}.{name}.weight"), &cfg);
            let qkv_bias = cfg.arch.qkv_bias();
            let (post_attn_norm, post_ffn_norm) = match cfg.arch.post_norms() {
                Some([a, f]) => (Some(norm_of(a.hf)?), Some(norm_of(f.hf)?)),
                None => (None, None),
            };
            let (q_norm, k_norm) = if cfg.arch.qk_norm() {
                (
                    Some(norm_of(block::Q_NORM.hf)?),
                    Some(norm_of(block::K_NORM.hf)?),
                )
            } else {
                (None, None)
            };
            blocks.push(Block {
                attn_norm: norm_of(block::ATTN_NORM.hf)?,
                wq: lin(block::Q.hf, qkv_bias)?,
                wk: lin(block::K.hf, qkv_bias)?,
                wv: lin(block::V.hf, qkv_bias)?,
                wo: lin(block::O.hf, false)?,
                q_norm,
                k_norm,
                ffn_norm: norm_of(cfg.arch.ffn_norm().hf)?,
                post_attn_norm,
                post_ffn_norm,
                gate: lin(block::GATE.hf, false)?,
                up: lin(block::UP.hf, false)?,
                down: lin(block::DOWN.hf, false)?,
            });
        }
        Decoder::new(cfg, embed, blocks, norm, output).map_err(map)
    }
}

/// What a stored tensor is to an MLX layer ([`HfFolder::part`]).
enum Part {
    ScalesOrBiases,
    Packed(String),
    Plain,
}

/// A weight matrix as [`HfFolder::matrix`] holds it.
enum Matrix {
    /// f32.
    Dense(Tensor),
    /// MLX affine quants on pot's Q4_1 kernel.
    Affine(Arc<Q8Matrix>),
    /// f16 or bf16, as stored.
    Half(QTensor),
    /// f16 or bf16 `(n, k)`, read in place from the mapped file (checked to fit).
    InPlace(GgmlDType, usize, usize, Mapped),
}

impl Matrix {
    /// The in-place matrix on pot's 16-bit kernel.
    fn in_place(dt: GgmlDType, n: usize, k: usize, bytes: Mapped) -> Box<dyn Product> {
        Box::new(HalfMatrix::mapped(dt, n, k, bytes).expect("checked when it was read"))
    }
}

/// Undo llama.cpp's query/key row permutation of GGUF Llama: rows `(head, pair, 2)` back to
/// `(head, 2, pair)`, Hugging Face's layout for NeoX-style RoPE.
fn unpermute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    w.reshape((heads, out / heads / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

/// Write a GGUF model as a Hugging Face folder (f32 safetensors, config.json, tokenizer.json,
/// tokenizer_config.json) in `out`, which must not exist yet; written to a temporary folder
/// beside it and renamed, so a failure leaves nothing behind.
pub fn export(gguf: &Path, out: &Path) -> Result<(), ModelError> {
    if out.exists() {
        return Err(ModelError::Exists {
            path: out.display().to_string(),
        });
    }
    let mut g = GgufFile::open(gguf)?;
    let cfg = g.config()?;
    if !cfg.arch.exports_hf() {
        let writes: Vec<&str> = Arch::ALL
            .into_iter()
            .filter(|a| a.exports_hf())
            .map(Arch::name)
            .collect();
        return Err(ModelError::UnsupportedArch {
            path: gguf.display().to_string(),
            arch: format!("{} (export-hf writes {})", cfg.arch, writes.join(", ")),
        });
    }
    let data = g.tokenizer_data()?;
    let tok = g.tokenizer()?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let names: Vec<String> = g.content.tensor_infos.keys().cloned().collect();
    for name in names {
        let Some(hf) = hf_name(cfg.arch, &name) else {
            continue;
        };
        let t = g
            .tensor(&name)?
            .dequantize(&Device::Cpu)
            .map_err(|e| corrupt(gguf, e))?;
        let t = match (cfg.rope_style, name.rsplit('.').nth(1)) {
            (RopeStyle::Interleaved, Some("attn_q")) if t.rank() == 2 => unpermute(&t, cfg.n_head),
            (RopeStyle::Interleaved, Some("attn_k")) if t.rank() == 2 => {
                unpermute(&t, cfg.n_kv_head)
            }
            _ => Ok(t),
        }
        .map_err(|e| corrupt(gguf, e))?;
        tensors.insert(hf, t);
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = tempfile_dir(parent.unwrap_or(Path::new(".")), out)?;
    let write = || -> Result<(), ModelError> {
        candle_core::safetensors::save(&tensors, tmp.join("model.safetensors")).map_err(|e| {
            write_err(
                &tmp,
                std::io::Error::other(crate::model::candle_message(&e)),
            )
        })?;
        let config = serde_json::json!({
            "model_type": cfg.arch.hf_model_type(),
            "architectures": [cfg.arch.hf_class()],
            "num_hidden_layers": cfg.n_layer,
            "hidden_size": cfg.d_model,
            "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.n_kv_head,
            "head_dim": cfg.head_dim,
            "intermediate_size": cfg.d_ff,
            "vocab_size": cfg.vocab_size,
            "rms_norm_eps": cfg.rms_eps,
            "rope_theta": cfg.rope_base,
            "max_position_embeddings": cfg.context_length,
            "tie_word_embeddings": cfg.tied_embeddings,
            "bos_token_id": data.bos,
            "eos_token_id": data.eos,
            "torch_dtype": "float32",
        });
        let w = |name: &str, text: String| {
            std::fs::write(tmp.join(name), text).map_err(|e| write_err(&tmp.join(name), e))
        };
        w(
            "config.json",
            serde_json::to_string_pretty(&config).expect("json"),
        )?;
        w(
            "tokenizer_config.json",
            // The class makes transformers (and mlx-lm) read tokenizer.json as written, rather
            // than rebuild a family's own pre-tokenizer.
            serde_json::json!({
                "add_bos_token": data.add_bos && data.bos.is_some(),
                "tokenizer_class": "PreTrainedTokenizerFast",
            })
            .to_string(),
        )?;
        w(
            "tokenizer.json",
            tok.inner_json().map_err(|e| corrupt(gguf, e))?,
        )?;
        std::fs::rename(&tmp, out).map_err(|e| write_err(out, e))
    };
    let r = write();
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
}

/// A fresh temporary folder in `parent`, named after `out`.
fn tempfile_dir(parent: &Path, out: &Path) -> Result<PathBuf, ModelError> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    std::fs::create_dir(&tmp).map_err(|e| write_err(&tmp, e))?;
    Ok(tmp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file with one f16 matrix, its header padded to `pad` bytes past the
    /// 8-byte length (the format allows any; Hugging Face's writer pads to 8, MLX's does not).
    fn write_f16(dir: &Path, values: &[f32], shape: [usize; 2], pad: usize) {
        let data: Vec<u8> = values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        let mut header = format!(
            r#"{{"m.weight":{{"dtype":"F16","shape":[{},{}],"data_offsets":[0,{}]}}}}"#,
            shape[0],
            shape[1],
            data.len()
        );
        while header.len() < pad {
            header.push(' ');
        }
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header.as_bytes());
        bytes.extend(&data);
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        std::fs::write(dir.join("config.json"), "{}").unwrap();
    }

    fn values(m: Matrix) -> (bool, Vec<f32>) {
        match m {
            Matrix::InPlace(dt, n, k, b) => {
                let p = Matrix::in_place(dt, n, k, b);
                (
                    true,
                    p.dequantize()
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap(),
                )
            }
            Matrix::Half(q) => (
                false,
                q.dequantize(&Device::Cpu)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap(),
            ),
            _ => panic!("a 16-bit matrix is held 16-bit"),
        }
    }

    #[test]
    fn sixteen_bit_matrices_are_read_in_place_where_aligned_and_copied_where_not() {
        let want: Vec<f32> = (0..4 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let want: Vec<f32> = want
            .iter()
            .map(|&v| half::f16::from_f32(v).to_f32())
            .collect();
        let aligned = tempfile::tempdir().unwrap();
        write_f16(aligned.path(), &want, [4, 64], 96);
        let odd = tempfile::tempdir().unwrap();
        write_f16(odd.path(), &want, [4, 64], 97);
        let read = |dir: &Path| {
            let f = HfFolder::open(dir).unwrap();
            values(f.matrix("m", None, Kernels::Quantized).unwrap())
        };
        let (in_place, got) = read(aligned.path());
        assert!(in_place || !super::super::mapped::enabled());
        assert_eq!(got, want);
        // Values at odd addresses: copied value by value (a 16-bit read of them in place
        // would be misaligned).
        let (in_place, got) = read(odd.path());
        assert!(!in_place);
        assert_eq!(got, want);
    }
}
