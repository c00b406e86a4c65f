//! Models: load a checkpoint, tokenize, score sequences by teacher forcing, and generate.
//!
//! A model is named by a path (a GGUF file, or a Hugging Face or MLX folder of config.json,
//! tokenizer.json and *.safetensors) or a Hugging Face id, found in the local hub cache or
//! downloaded on demand ([`hub`]).
//! This room owns the engine; it knows nothing of challenges, scores or decisions.

pub mod arch;
pub mod attention;
pub mod chat;
pub mod decoder;
pub mod device;
pub mod generate;
pub mod gguf;
pub mod half;
pub mod hf;
pub mod hub;
pub mod kq;
pub mod layers;
pub mod mapped;
pub mod mlx;
pub mod q8;
pub mod spm;
pub mod tiles;
pub mod tiny;
pub mod tokenizer;
pub mod vexp;

use std::path::{Path, PathBuf};

use candle_core::Tensor;

pub use arch::Arch;
pub use decoder::{Config, Decoder, Kernels, KvCache};
pub use tokenizer::Tokenizer;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// The device named by `--device` cannot run the model.
    #[error("--device {device}: {reason}")]
    Device {
        /// The device as given.
        device: String,
        /// Why, and the fix.
        reason: String,
    },
    /// The path could not be opened or read.
    #[error("{path}: cannot open model file ({source}); check the path")]
    Open {
        /// File.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An output (an exported checkpoint) could not be written.
    #[error("{path}: cannot write ({source}); check that the folder is writable and has space")]
    Write {
        /// File or folder.
        path: String,
        /// The OS error (or, from candle's writer, its message as one).
        #[source]
        source: std::io::Error,
    },
    /// An output that exists already.
    #[error("{path}: already exists; choose a new output folder")]
    Exists {
        /// File or folder.
        path: String,
    },
    /// Not a GGUF file.
    #[error("{path}: not a GGUF file (no GGUF magic); pass a .gguf model file")]
    NotGguf {
        /// File.
        path: String,
    },
    /// A model file (GGUF or safetensors) whose structure is broken or truncated.
    #[error(
        "{path}: corrupt or truncated model file: {reason}; fetch it again and check its sha256"
    )]
    Corrupt {
        /// File.
        path: String,
        /// What was wrong.
        reason: String,
    },
    /// A required metadata key is missing.
    #[error("{path}: GGUF metadata lacks required key {key}; the converter that wrote it is too old or the file is not a language model")]
    MissingKey {
        /// File.
        path: String,
        /// Key.
        key: String,
    },
    /// A required tensor is missing.
    #[error("{path}: tensor {name} is missing; the file is not a complete checkpoint of its architecture")]
    MissingTensor {
        /// File.
        path: String,
        /// Tensor name.
        name: String,
    },
    /// An architecture pot has no forward pass for.
    #[error(
        "{path}: architecture {arch:?} is not supported (supported: {})",
        arch::Arch::supported()
    )]
    UnsupportedArch {
        /// File.
        path: String,
        /// `general.architecture`.
        arch: String,
    },
    /// A weight encoding pot does not read (another tool's quantization, an MLX mode or
    /// width it has no kernel for); the message names what it reads instead.
    #[error("{path}: {what}")]
    UnsupportedEncoding {
        /// File or folder.
        path: String,
        /// What is unsupported, and what to pass instead.
        what: String,
    },
    /// A tokenizer pot cannot build.
    #[error("{path}: unsupported tokenizer: {what}")]
    UnsupportedTokenizer {
        /// File.
        path: String,
        /// What is unsupported.
        what: String,
    },
    /// A model spec that names nothing pot can load.
    #[error("{spec}: {reason}")]
    NotFound {
        /// What the user typed.
        spec: String,
        /// What was looked for.
        reason: String,
    },
    /// The tokenizer library failed on an input it should take (its cause kept).
    #[error(
        "the model's tokenizer cannot {action}; its vocabulary may be damaged: re-fetch the model"
    )]
    Tokenize {
        /// What was asked of it ("encode the text", "decode token ids", ...).
        action: &'static str,
        /// The tokenizer library's error.
        #[source]
        source: tokenizers::Error,
    },
    /// Token ids that are not in the tokenizer's vocabulary.
    #[error("token id {id} is outside the tokenizer's vocabulary of {vocab}: the ids were not made by this model's tokenizer")]
    UnknownToken {
        /// The first such id.
        id: u32,
        /// Entries in the vocabulary.
        vocab: usize,
    },
    /// A continuation was asked of an empty prompt.
    #[error("cannot continue an empty prompt: give each prompt at least one token")]
    EmptyPrompt,
    /// A chat was asked of a model that ships no chat template.
    #[error("{spec}: the model ships no chat template (tokenizer.chat_template), so a chat cannot be rendered; send a completions request, or use an instruction-tuned model")]
    NoChatTemplate {
        /// The model.
        spec: String,
    },
    /// A chat template that cannot be rendered.
    #[error("{origin}: chat template cannot be rendered: {source}")]
    Template {
        /// Which model's template.
        origin: String,
        /// minijinja's error.
        #[source]
        source: minijinja::Error,
    },
    /// The forward pass failed.
    #[error("{path}: inference failed: {reason}")]
    Inference {
        /// File.
        path: String,
        /// candle's message.
        reason: String,
    },
}

/// How to hold the weights in memory.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Which matrix kernels to run.
    pub kernels: Kernels,
    /// Where to run them; `None`: the process's default (`pot --device`, else pot's CPU
    /// kernels).
    pub device: Option<device::DeviceSpec>,
}

impl LoadOptions {
    /// These kernels, on the default device.
    pub fn kernels(kernels: Kernels) -> Self {
        Self {
            kernels,
            device: None,
        }
    }
}

/// A loaded model.
pub struct Model {
    /// The spec the user gave (path or id).
    pub spec: String,
    /// The file the weights came from.
    pub path: PathBuf,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its network.
    pub decoder: Decoder,
    /// Its chat template, when it ships one.
    pub chat_template: Option<chat::ChatTemplate>,
}

/// A candle error as one line: without the backtrace candle attaches when `RUST_BACKTRACE` is
/// set, its context joined with `: `.
pub fn candle_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => candle_message(inner),
        candle_core::Error::Context { inner, context } => {
            format!("{context}: {}", candle_message(inner))
        }
        other => other.to_string().replace('\n', " "),
    }
}

/// The threads the engine's CPU kernels run on (as many as the CPUs unless the front end set
/// a number; `pot --threads`).
pub fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Resolve a spec (path or Hugging Face id) to a GGUF file.
pub fn resolve(spec: &str) -> Result<PathBuf, ModelError> {
    let p = Path::new(spec);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    if hf::is_hf_folder(p) {
        return Ok(p.to_path_buf());
    }
    if p.is_dir() {
        let ggufs: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| ModelError::Open {
                path: spec.into(),
                source: e,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|f| f.extension().is_some_and(|x| x == "gguf"))
            .collect();
        return match ggufs.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err(ModelError::NotFound {
                spec: spec.into(),
                reason: "folder holds neither a .gguf file nor a Hugging Face model (config.json, tokenizer.json, *.safetensors); pass a model file or folder".into(),
            }),
            _ => Err(ModelError::NotFound {
                spec: spec.into(),
                reason: "folder holds several .gguf files; pass one of them".into(),
            }),
        };
    }
    match hub::HubSpec::parse(spec) {
        Some(id) => {
            let got = hub::fetch(&id)?;
            if got.is_dir() {
                resolve(&got.display().to_string())
            } else {
                Ok(got)
            }
        }
        None => Err(ModelError::NotFound {
            spec: spec.into(),
            reason: "no such file or folder; pass a GGUF file, a Hugging Face or MLX folder, or a Hugging Face id (org/name, org/name:FILE, org/name:Q4_K_M)"
                .into(),
        }),
    }
}

/// Only the tokenizer of a model (no weights are read).
pub fn load_tokenizer(spec: &str) -> Result<Tokenizer, ModelError> {
    Ok(TextSide::load(spec)?.tokenizer)
}

/// What a model reads and writes as text, without its weights: its tokenizer and chat
/// template (for a reference served elsewhere, whose prompts pot must still tokenize).
pub struct TextSide {
    /// The spec the user gave.
    pub spec: String,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template, when it ships one.
    pub chat_template: Option<chat::ChatTemplate>,
}

impl TextSide {
    /// The tokenizer and chat template of a model file or folder (no weights are read).
    pub fn load(spec: &str) -> Result<Self, ModelError> {
        let path = resolve(spec)?;
        let (tokenizer, template) = if hf::is_hf_folder(&path) {
            let folder = hf::HfFolder::open(&path)?;
            (folder.tokenizer()?, folder.chat_template())
        } else {
            let file = gguf::GgufFile::open(&path)?;
            (file.tokenizer()?, file.chat_template())
        };
        Ok(Self::new(spec, &path, tokenizer, template))
    }

    fn new(spec: &str, path: &Path, tokenizer: Tokenizer, template: Option<String>) -> Self {
        let token_text = |id: Option<u32>| {
            id.map(|i| String::from_utf8_lossy(&tokenizer.token_bytes(i)).into_owned())
                .unwrap_or_default()
        };
        let chat_template = template.map(|src| {
            chat::ChatTemplate::new(
                src,
                path.display().to_string(),
                token_text(tokenizer.bos_id),
                token_text(tokenizer.eos),
            )
        });
        Self {
            spec: spec.to_string(),
            tokenizer,
            chat_template,
        }
    }

    /// The prompt token ids of a chat: the messages rendered with the model's own template,
    /// the assistant's turn opened. A BOS the template writes is not doubled.
    pub fn chat_prompt(&self, messages: &[chat::Message]) -> Result<Vec<u32>, ModelError> {
        chat_ids(
            &self.spec,
            &self.tokenizer,
            self.chat_template.as_ref(),
            messages,
        )
    }
}

/// A chat's prompt ids: rendered by the template of the model `spec` names, a BOS it writes
/// not doubled.
fn chat_ids(
    spec: &str,
    tokenizer: &Tokenizer,
    template: Option<&chat::ChatTemplate>,
    messages: &[chat::Message],
) -> Result<Vec<u32>, ModelError> {
    let template = template.ok_or_else(|| ModelError::NoChatTemplate {
        spec: spec.to_string(),
    })?;
    let text = template.render(messages)?;
    let body = match (tokenizer.bos, template.bos()) {
        (Some(_), b) if !b.is_empty() => text.strip_prefix(b).unwrap_or(&text),
        _ => &text,
    };
    tokenizer.encode(body)
}

impl Model {
    /// Load a model from a path or a cached Hugging Face id.
    pub fn load(spec: &str, opts: LoadOptions) -> Result<Self, ModelError> {
        // A device this build or machine cannot drive is refused before any weight is read.
        let on = opts.device.unwrap_or_else(device::default_spec);
        let device = on.open()?;
        let path = resolve(spec)?;
        let (tokenizer, mut decoder, template) = if hf::is_hf_folder(&path) {
            let folder = hf::HfFolder::open(&path)?;
            (
                folder.tokenizer()?,
                folder.decoder(opts.kernels)?,
                folder.chat_template(),
            )
        } else {
            let mut file = gguf::GgufFile::open(&path)?;
            (
                file.tokenizer()?,
                file.decoder(opts.kernels)?,
                file.chat_template(),
            )
        };
        let text = TextSide::new(spec, &path, tokenizer, template);
        decoder.f16_attention = opts.kernels == Kernels::Quantized;
        if let Some(dev) = device {
            decoder = decoder.to_device(&dev).map_err(|e| ModelError::Device {
                device: on.to_string(),
                reason: format!(
                    "{}: cannot move the weights there: {}",
                    path.display(),
                    candle_message(&e)
                ),
            })?;
        }
        Ok(Self {
            spec: spec.to_string(),
            path,
            tokenizer: text.tokenizer,
            decoder,
            chat_template: text.chat_template,
        })
    }

    /// The prompt token ids of a chat: the messages rendered with the model's own template,
    /// the assistant's turn opened. A BOS the template writes is not doubled.
    pub fn chat_prompt(&self, messages: &[chat::Message]) -> Result<Vec<u32>, ModelError> {
        chat_ids(
            &self.spec,
            &self.tokenizer,
            self.chat_template.as_ref(),
            messages,
        )
    }

    fn inference_err(&self, e: candle_core::Error) -> ModelError {
        ModelError::Inference {
            path: self.path.display().to_string(),
            reason: candle_message(&e),
        }
    }

    /// Raw logits `(n, vocab)` after each of `tokens[from..]`, by one teacher-forced pass.
    pub fn logits(&self, tokens: &[u32], from: usize) -> Result<Tensor, ModelError> {
        let mut cache = KvCache::default();
        self.decoder
            .forward(tokens, &mut cache, from)
            .map_err(|e| self.inference_err(e))
    }

    /// Log-probabilities after each of `tokens[from..]` (row `i` predicts `tokens[from+i+1]`).
    pub fn logprobs(&self, tokens: &[u32], from: usize) -> Result<Vec<Vec<f32>>, ModelError> {
        Ok(self.logprobs_batch(&[tokens], &[from])?.remove(0))
    }

    /// Log-probabilities after `tokens[p]` for each `p` in `positions` only, by one
    /// teacher-forced pass (the rows of [`Model::logprobs`] at those positions).
    pub fn logprobs_at(
        &self,
        tokens: &[u32],
        positions: &[usize],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let logits = self
            .decoder
            .forward_at(tokens, positions)
            .map_err(|e| self.inference_err(e))?;
        decoder::log_softmax_rows(&logits).map_err(|e| self.inference_err(e))
    }

    /// [`Model::logprobs`] of several sequences in one pass (one batch of matrix products).
    pub fn logprobs_batch(
        &self,
        seqs: &[&[u32]],
        from: &[usize],
    ) -> Result<Vec<Vec<Vec<f32>>>, ModelError> {
        let mut caches: Vec<KvCache> = seqs.iter().map(|_| KvCache::default()).collect();
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let logits = self
            .decoder
            .forward_rows(seqs, &mut refs, from)
            .map_err(|e| self.inference_err(e))?;
        let mut rows = decoder::log_softmax_rows(&logits)
            .map_err(|e| self.inference_err(e))?
            .into_iter();
        Ok(seqs
            .iter()
            .zip(from)
            .map(|(s, f)| rows.by_ref().take(s.len() - f).collect())
            .collect())
    }

    /// Greedy continuation of `prompt`: up to `max_new` tokens, stopping after an end token.
    pub fn greedy(&self, prompt: &[u32], max_new: usize) -> Result<Vec<u32>, ModelError> {
        Ok(self
            .continue_batch(&[prompt], max_new, true, false)?
            .remove(0)
            .tokens)
    }

    /// Greedy continuation of exactly `max_new` tokens, end tokens or not (benchmarks).
    pub fn greedy_exact(&self, prompt: &[u32], max_new: usize) -> Result<Vec<u32>, ModelError> {
        Ok(self
            .continue_batch(&[prompt], max_new, false, false)?
            .remove(0)
            .tokens)
    }

    /// Continue a batch of prompts greedily together, for up to `max_new` tokens each
    /// (stopping after an end token when `stop`), recording the log-probabilities the model
    /// gives each next token when `keep_logprobs`. Greedy picks the first largest logit, like
    /// llama.cpp's greedy sampler. This is the one batched generation loop
    /// ([`generate::Batch`]) run to the end with each prompt read in one pass: all sequences
    /// share each step's matrix products, so a group costs about as much per step as one
    /// sequence where reading the weights dominates.
    pub fn continue_batch(
        &self,
        prompts: &[&[u32]],
        max_new: usize,
        stop: bool,
        keep_logprobs: bool,
    ) -> Result<Vec<Continuation>, ModelError> {
        if prompts.iter().any(|p| p.is_empty()) {
            return Err(ModelError::EmptyPrompt);
        }
        if max_new == 0 {
            return Ok(prompts.iter().map(|_| Continuation::default()).collect());
        }
        let mut batch = generate::Batch::new(usize::MAX);
        let mut receivers = Vec::with_capacity(prompts.len());
        for p in prompts {
            let (mut job, rx) = generate::Job::greedy(p.to_vec(), max_new, false);
            job.stop_at_end = stop;
            job.keep_rows = keep_logprobs;
            batch.admit(job);
            receivers.push(rx);
        }
        while !batch.is_empty() {
            batch.step(self);
        }
        receivers
            .into_iter()
            .map(|mut rx| loop {
                match rx.try_recv() {
                    Ok(generate::Event::Done { output, rows, .. }) => {
                        let logprobs = match rows {
                            Some(r) if !r.is_empty() => {
                                let t = Tensor::new(r, &candle_core::Device::Cpu)
                                    .map_err(|e| self.inference_err(e))?;
                                decoder::log_softmax_rows(&t).map_err(|e| self.inference_err(e))?
                            }
                            _ => Vec::new(),
                        };
                        return Ok(Continuation {
                            tokens: output,
                            logprobs,
                        });
                    }
                    Ok(generate::Event::Failed(reason)) => {
                        return Err(ModelError::Inference {
                            path: self.path.display().to_string(),
                            reason,
                        })
                    }
                    Ok(_) => continue,
                    Err(_) => {
                        return Err(ModelError::Inference {
                            path: self.path.display().to_string(),
                            reason: "generation ended without a result".into(),
                        })
                    }
                }
            })
            .collect()
    }
}

/// What [`Model::continue_batch`] gives for one sequence.
#[derive(Clone, Debug, Default)]
pub struct Continuation {
    /// The continuation tokens.
    pub tokens: Vec<u32>,
    /// Row `j`: log-probabilities of the token at continuation position `j`, given the prompt
    /// and `tokens[..j]` (empty unless asked for).
    pub logprobs: Vec<Vec<f32>>,
}

/// Index of the largest value (the first one on ties, like llama.cpp's greedy sampler).
pub fn argmax(row: &[f32]) -> u32 {
    // Entries a reference does not know (NaN: a trusted endpoint's unlisted tokens) never win.
    let mut best = 0usize;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || (row[best].is_nan() && !v.is_nan()) {
            best = i;
        }
    }
    best as u32
}
