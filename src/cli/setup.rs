//! Flags become library objects here, and only here: run specs, run files and keys, bundle
//! plans, endpoint configurations, the environment variables pot reads, the files it opens.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use pot::run::files::RunFiles;

use super::args::{RunArgs, TargetArgs};

impl RunArgs {
    /// The bundle's path and signing key, checked before any work is done.
    pub(crate) fn bundle_plan(&self) -> Result<Option<(PathBuf, pot::commit::keys::AuditorKey)>> {
        let (Some(path), Some(key)) = (&self.bundle, &self.auditor_key) else {
            if self.auditor_key.is_some() {
                bail!("--auditor-key is for --bundle PATH; add --bundle or drop it");
            }
            return Ok(None);
        };
        if path.exists() {
            bail!(
                "--bundle {}: exists already; pick another path or remove it",
                path.display()
            );
        }
        Ok(Some((
            path.clone(),
            pot::commit::keys::AuditorKey::read(key)?,
        )))
    }

    /// The library's description of the run, its parameters checked before any work: the
    /// overrides must make a valid test for every way challenges may be scored.
    pub(crate) fn spec(&self, files: &RunFiles) -> Result<pot::run::RunSpec> {
        use pot::score::ScoreKind;
        let k = self.k.unwrap_or(self.mode.k());
        if k == 0 {
            bail!("--k must be at least 1");
        }
        let given = self.margins.as_ref().or(self.calibration.as_ref());
        let spec = pot::run::RunSpec {
            mode: self.mode,
            overrides: pot::run::Overrides {
                alpha: self.alpha,
                gamma: self.gamma,
                delta: self.delta,
                clip: self.clip,
                n_min: self.n_min,
                n_max: self.n_max,
            },
            k,
            calibration: given
                .map(|p| pot::calibrate::Calibration::read(p))
                .transpose()?,
            margins_from_calibration: self.margins.is_some(),
            calibration_store: Some(calibration_store()),
            kernels: self.kernels.into(),
            key: files.key.clone(),
            run_id: files.run_id.clone(),
            transcript: files.transcript.clone(),
            resume: files.resume,
        };
        // Bad overrides are refused before any work, for each kind a run may score; with
        // --margins only KL (a calibration measures nothing else, and a run that turns out to
        // score bits per byte is refused when it finds that out).
        let kinds: &[ScoreKind] = if spec.margins_from_calibration {
            &[ScoreKind::Kl]
        } else {
            &[ScoreKind::Kl, ScoreKind::BitsPerByte]
        };
        for &kind in kinds {
            spec.params(kind, spec.calibration.as_ref())?;
        }
        Ok(spec)
    }

    /// The budget, for the progress bar.
    pub(crate) fn n_max(&self) -> usize {
        self.n_max
            .unwrap_or(self.mode.params(pot::score::ScoreKind::Kl).n_max)
    }

    pub(crate) fn files(&self) -> Result<RunFiles> {
        Ok(RunFiles::prepare(
            self.key_file.as_deref(),
            self.run_id.as_deref(),
            self.resume.as_deref(),
            &self.transcripts,
        )?)
    }

    /// The files of an audit by a reference pack: the pack's run id and the key it was built
    /// with, and a transcript name of its own (a pack may be audited more than once).
    pub(crate) fn files_for_pack(&self, run_id: &str) -> Result<RunFiles> {
        let Some(key) = &self.key_file else {
            bail!("--ref-pack needs the --key-file the pack was built with");
        };
        if self.run_id.is_some() || self.resume.is_some() {
            bail!("--ref-pack takes the run id from the pack; drop --run-id and --resume");
        }
        let mut files = RunFiles::prepare(Some(key), Some(run_id), None, &self.transcripts)?;
        let mut n = 2;
        while files.transcript.exists() {
            files.transcript = self.transcripts.join(format!("{run_id}.{n}.ndjson"));
            n += 1;
        }
        Ok(files)
    }
}

/// The folder of stored calibrations: $POT_CALIBRATIONS, else ~/.cache/pot/calibrations.
pub(crate) fn calibration_store() -> PathBuf {
    match std::env::var_os("POT_CALIBRATIONS") {
        Some(d) => PathBuf::from(d),
        None => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".cache/pot/calibrations"),
    }
}

/// An Ed25519 public key given as 64 hex digits or as a file holding them.
pub(crate) fn read_pubkey(flag: &str, arg: &str) -> Result<pot::commit::keys::NodePublic> {
    let text = if arg.len() == 64 && arg.bytes().all(|b| b.is_ascii_hexdigit()) {
        arg.to_string()
    } else {
        std::fs::read_to_string(arg).map_err(|e| {
            anyhow::anyhow!("{flag} {arg}: neither 64 hex digits nor a readable file holding them ({e}); pass the public key `pot keygen --auditor` printed")
        })?
    };
    pot::commit::keys::NodePublic::from_hex(text.trim())
        .with_context(|| format!("{flag} {arg}: not an Ed25519 public key (64 hex digits, as `pot keygen --auditor` prints)"))
}

/// The API key in the variable `--api-key-env` names, if it names one.
pub(crate) fn api_key_from_env(var: Option<&str>) -> Result<Option<String>> {
    var.map(|var| {
        std::env::var(var).map_err(|_| {
            anyhow::anyhow!(
                "--api-key-env {var}: the variable is not set (or not Unicode); export the key in it or drop the flag"
            )
        })
    })
    .transpose()
}

impl TargetArgs {
    /// The decoding to audit at.
    pub(crate) fn sampling(&self) -> Result<pot::score::sampled::Sampling> {
        let s = pot::score::sampled::Sampling {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
        };
        s.validate().map_err(|e| anyhow::anyhow!(e))?;
        if s.sampled() && self.ref_pack.is_some() {
            bail!("--ref-pack holds greedy continuations: a sampled audit (--temperature above 0) needs --ref or --ref-endpoint");
        }
        Ok(s)
    }

    /// The reference and the endpoint, as the library takes them (API keys read from the
    /// environment now, so a missing one fails before any work).
    pub(crate) fn configs(
        &self,
    ) -> Result<(pot::audit::ReferenceSource, pot::openai::EndpointConfig)> {
        for (name, v) in [
            ("--timeout", self.timeout),
            ("--max-backoff", self.max_backoff),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                bail!("{name} must be a positive number of seconds");
            }
        }
        let endpoint = |url: &str, model: &str, key: Option<&str>| -> Result<_> {
            Ok(pot::openai::EndpointConfig {
                url: url.to_string(),
                model: model.to_string(),
                chat: self.chat,
                api_key: api_key_from_env(key)?,
                timeout: std::time::Duration::from_secs_f64(self.timeout),
                retries: self.retries,
                max_backoff: std::time::Duration::from_secs_f64(self.max_backoff),
            })
        };
        let tokenizer = || {
            self.ref_tokenizer.clone().ok_or_else(|| {
                anyhow::anyhow!("--ref-endpoint and --ref-pack need --ref-tokenizer MODEL (a file or folder of the claimed model; no weights are read)")
            })
        };
        if self.ref_tokenizer.is_some() && self.reference.is_some() {
            bail!("--ref-tokenizer is for --ref-endpoint and --ref-pack; --ref reads its own tokenizer");
        }
        let reference = match (&self.reference, &self.ref_endpoint, &self.ref_pack) {
            (Some(spec), _, _) => pot::audit::ReferenceSource::Model(spec.clone()),
            (None, None, Some(path)) => {
                let signer = self
                    .ref_pack_signer
                    .as_deref()
                    .map(|k| read_pubkey("--ref-pack-signer", k))
                    .transpose()?;
                // Opened once, here: its signature is checked before its body is read.
                let body = pot::audit::pack::open(path, signer.as_ref())?;
                pot::audit::ReferenceSource::Pack {
                    path: path.clone(),
                    body: Box::new(body),
                    tokenizer: tokenizer()?,
                }
            }
            (None, Some(url), _) => pot::audit::ReferenceSource::Endpoint {
                endpoint: endpoint(
                    url,
                    self.ref_model.as_deref().unwrap_or_default(),
                    self.ref_api_key_env.as_deref(),
                )?,
                tokenizer: tokenizer()?,
            },
            (None, None, None) => {
                bail!(
                    "pass --ref MODEL, or --ref-endpoint URL with --ref-model and --ref-tokenizer"
                )
            }
        };
        let endpoint = endpoint(&self.endpoint, &self.model, self.api_key_env.as_deref())?;
        Ok((reference, endpoint))
    }
}
