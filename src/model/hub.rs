//! Hugging Face ids: `org/name` (a Hugging Face or MLX folder, or a repository's one GGUF),
//! `org/name:FILE` (one file of it) or `org/name:TAG` (its GGUF whose name has the
//! quantization tag, e.g. `:Q4_K_M`), looked up in the local hub cache first and downloaded on
//! demand, as transformers and mlx-lm do.
//!
//! Downloads go through hf-hub into the hub's own cache layout (`HF_HOME`, default
//! `~/.cache/huggingface/hub`), so other tools share what pot fetched and pot what they did; an
//! interrupted download resumes where it stopped. `HF_ENDPOINT` points at another hub (a
//! mirror), `HF_TOKEN` authenticates, `HF_HUB_OFFLINE=1` forbids the network. Offline, an id
//! that is not cached fails with the cache path and the command that would fetch it.

use std::path::{Path, PathBuf};

use hf_hub::api::tokio::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use super::ModelError;

/// What an id names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubSpec {
    /// `org/name`.
    pub repo: String,
    /// A file, or a quantization tag, after `:`.
    pub pick: Option<String>,
}

impl HubSpec {
    /// Read `org/name[:FILE|:TAG]`; `None` when `spec` is not shaped like an id.
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo, pick) = match spec.split_once(':') {
            Some((r, p)) if !p.is_empty() => (r, Some(p.to_string())),
            Some(_) => return None,
            None => (spec, None),
        };
        let ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        match repo.split_once('/') {
            Some((org, name)) if ok(org) && ok(name) => Some(Self {
                repo: repo.to_string(),
                pick,
            }),
            _ => None,
        }
    }

    /// The cache folder of the repository (`models--org--name`).
    pub fn cache_dir(&self, cache: &Cache) -> PathBuf {
        cache
            .path()
            .join(format!("models--{}", self.repo.replace('/', "--")))
    }

    fn display(&self) -> String {
        match &self.pick {
            Some(p) => format!("{}:{p}", self.repo),
            None => self.repo.clone(),
        }
    }
}

/// Whether the network is forbidden (`HF_HUB_OFFLINE` set to 1, true or yes).
fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

/// The files of a folder pot reads (weights, config, tokenizer).
fn folder_file(name: &str) -> bool {
    matches!(
        name,
        "config.json"
            | "tokenizer.json"
            | "tokenizer_config.json"
            | "generation_config.json"
            | "model.safetensors.index.json"
    ) || (name.ends_with(".safetensors") && !name.contains('/'))
}

/// Which of a repository's `files` make up what `spec` names: the named file, the one GGUF
/// with the tag, the folder's files, or the repository's one GGUF.
pub fn choose(spec: &HubSpec, files: &[String]) -> Result<Vec<String>, String> {
    let ggufs: Vec<&String> = files.iter().filter(|f| f.ends_with(".gguf")).collect();
    let list = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
    match &spec.pick {
        Some(p) if files.iter().any(|f| f == p) => Ok(vec![p.clone()]),
        Some(p) => {
            let tag = p.to_ascii_lowercase();
            let hits: Vec<&String> = ggufs
                .iter()
                .copied()
                .filter(|f| {
                    let stem = f.to_ascii_lowercase();
                    stem.trim_end_matches(".gguf")
                        .split(['-', '.', '_'])
                        .collect::<Vec<_>>()
                        .windows(tag.split('_').count())
                        .any(|w| w.join("_") == tag)
                })
                .collect();
            match hits.as_slice() {
                [one] => Ok(vec![(*one).clone()]),
                [] => Err(format!(
                    "no file {p} and no GGUF with the tag {p} in the repository (its GGUF files: {})",
                    if ggufs.is_empty() { "none".into() } else { list(&ggufs) }
                )),
                many => Err(format!(
                    "several GGUF files have the tag {p} ({}); name one as {}:FILE",
                    list(many),
                    spec.repo
                )),
            }
        }
        None => {
            let folder: Vec<String> = files.iter().filter(|f| folder_file(f)).cloned().collect();
            let has_weights = folder.iter().any(|f| f.ends_with(".safetensors"));
            if has_weights && folder.iter().any(|f| f == "config.json") {
                return Ok(folder);
            }
            match ggufs.as_slice() {
                [one] => Ok(vec![(*one).clone()]),
                [] => Err("the repository holds neither safetensors weights with a config.json nor a GGUF file".into()),
                many => Err(format!(
                    "the repository holds several GGUF files ({}); name one as {}:FILE or by its quantization tag, e.g. {}:Q4_K_M",
                    list(many),
                    spec.repo,
                    spec.repo
                )),
            }
        }
    }
}

/// The local path of what `spec` names, from the cache when it is there (no network), else
/// downloaded. A folder's path is its snapshot folder; a GGUF's, the file.
pub fn fetch(spec: &HubSpec) -> Result<PathBuf, ModelError> {
    let cache = Cache::from_env();
    if let Some(p) = cached(spec, &cache, offline()) {
        return Ok(p);
    }
    let not_cached = |why: String| ModelError::NotFound {
        spec: spec.display(),
        reason: format!(
            "not a local path, and the Hugging Face id is not in the local cache ({}); {why}",
            spec.cache_dir(&cache).display()
        ),
    };
    if offline() {
        return Err(not_cached(format!(
            "HF_HUB_OFFLINE forbids downloading it: fetch it where the hub is reachable (huggingface-cli download {}) and copy the cache, or pass a model file or folder",
            spec.repo
        )));
    }
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
    let spec2 = spec.clone();
    // Its own thread and runtime: callers may already be inside one (pot serve).
    let got = std::thread::spawn(move || download(&spec2))
        .join()
        .unwrap_or_else(|_| Err(DownloadError::Other("the download thread panicked".into())));
    got.map_err(|e| match e {
        DownloadError::Hub(e) => not_cached(format!(
            "downloading it from {endpoint} failed ({}): check the id and the network (HF_ENDPOINT for a mirror, HF_TOKEN for a gated model, HF_HUB_OFFLINE=1 to stay offline), or pass a model file or folder",
            crate::with_causes(&e).replace('\n', " ")
        )),
        DownloadError::Choose(why) => ModelError::NotFound {
            spec: spec.display(),
            reason: why,
        },
        DownloadError::Other(why) => not_cached(why),
    })
}

enum DownloadError {
    Hub(ApiError),
    Choose(String),
    Other(String),
}

/// What the cache holds for `spec` already, if complete. A bare id whose cached snapshot
/// holds one GGUF names it only `offline`: online, the hub says whether the repository has
/// others to choose from.
fn cached(spec: &HubSpec, cache: &Cache, offline: bool) -> Option<PathBuf> {
    let repo = cache.repo(Repo::new(spec.repo.clone(), RepoType::Model));
    if let Some(p) = &spec.pick {
        if let Some(f) = repo.get(p) {
            return Some(f);
        }
    }
    let dir = spec.cache_dir(cache);
    let commit = std::fs::read_to_string(dir.join("refs").join("main")).ok()?;
    let snap = dir.join("snapshots").join(commit.trim());
    let files: Vec<String> = std::fs::read_dir(&snap)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let chosen = choose(spec, &files).ok()?;
    match chosen.as_slice() {
        [one] if one.ends_with(".gguf") && (offline || spec.pick.is_some()) => Some(snap.join(one)),
        [one] if one.ends_with(".gguf") => None,
        _ if super::hf::is_hf_folder(&snap) && weights_complete(&snap) => Some(snap),
        _ => None,
    }
}

/// Whether every shard a `model.safetensors.index.json` names is in the folder.
fn weights_complete(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join("model.safetensors.index.json")) else {
        return true;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    v["weight_map"].as_object().is_some_and(|m| {
        m.values()
            .filter_map(|f| f.as_str())
            .all(|f| dir.join(f).is_file())
    })
}

fn download(spec: &HubSpec) -> Result<PathBuf, DownloadError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| DownloadError::Other(format!("cannot start the downloader ({e})")))?;
    rt.block_on(async {
        let api = ApiBuilder::from_env()
            .with_progress(true)
            .with_user_agent("pot", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(DownloadError::Hub)?;
        let repo = api.model(spec.repo.clone());
        let info = repo.info().await.map_err(DownloadError::Hub)?;
        let files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        let chosen = choose(spec, &files).map_err(DownloadError::Choose)?;
        let mut last = None;
        for f in &chosen {
            last = Some(repo.get(f).await.map_err(DownloadError::Hub)?);
        }
        let last = last.ok_or_else(|| DownloadError::Choose("nothing to download".into()))?;
        Ok(if chosen.len() == 1 && chosen[0].ends_with(".gguf") {
            last
        } else {
            // The snapshot folder: the file's parent (files in subfolders are not fetched).
            last.parent().map(Path::to_path_buf).unwrap_or(last)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn ids_parse_and_paths_do_not() {
        let p = HubSpec::parse("Qwen/Qwen3-0.6B").unwrap();
        assert_eq!((p.repo.as_str(), p.pick), ("Qwen/Qwen3-0.6B", None));
        let p = HubSpec::parse("org/name-GGUF:Q4_K_M").unwrap();
        assert_eq!(p.pick.as_deref(), Some("Q4_K_M"));
        for bad in [
            "./a/b",
            "a/b/c",
            "a",
            "/abs/path",
            "a/b:",
            "C:\\x",
            "../x/y",
        ] {
            assert!(HubSpec::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn choosing_files_follows_the_spec() {
        let folder = s(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer_config.json",
        ]);
        let spec = HubSpec::parse("mlx-community/Qwen3-0.6B-4bit").unwrap();
        let got = choose(&spec, &folder).unwrap();
        assert_eq!(got.len(), 6, "{got:?}");
        assert!(!got.iter().any(|f| f == "README.md"));
        let ggufs = s(&[
            "README.md",
            "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            "qwen2.5-coder-0.5b-instruct-q8_0.gguf",
            "qwen2.5-coder-0.5b-instruct-fp16.gguf",
        ]);
        let any = HubSpec::parse("Qwen/x-GGUF").unwrap();
        assert!(choose(&any, &ggufs).unwrap_err().contains("several GGUF"));
        let tag = HubSpec::parse("Qwen/x-GGUF:Q4_K_M").unwrap();
        assert_eq!(
            choose(&tag, &ggufs).unwrap(),
            ["qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"]
        );
        let q8 = HubSpec::parse("Qwen/x-GGUF:q8_0").unwrap();
        assert_eq!(
            choose(&q8, &ggufs).unwrap(),
            ["qwen2.5-coder-0.5b-instruct-q8_0.gguf"]
        );
        let file = HubSpec::parse("Qwen/x-GGUF:qwen2.5-coder-0.5b-instruct-fp16.gguf").unwrap();
        assert_eq!(choose(&file, &ggufs).unwrap().len(), 1);
        let none = HubSpec::parse("Qwen/x-GGUF:Q3_K_S").unwrap();
        assert!(choose(&none, &ggufs)
            .unwrap_err()
            .contains("no GGUF with the tag"));
    }
}
