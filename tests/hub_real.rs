//! Hugging Face ids downloaded on demand, against a local server that serves real model files
//! in the hub's layout (`/api/models/{repo}/revision/{rev}`, `/{repo}/resolve/{rev}/{file}`
//! with byte ranges, `etag` and `x-repo-commit`), pointed at by `HF_ENDPOINT` as a mirror
//! would be: a folder and a GGUF chosen by its quantization tag land in the hub's own cache
//! layout, are read from the cache offline afterwards, and a download cut off midway resumes.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use common::{hf_folder, model_path, pot};
use serde_json::{json, Value};

const SMOL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const COMMIT: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f901234567";

/// Repositories (`org/name` → file name → local file) and what was asked of them.
struct Hub {
    repos: BTreeMap<String, BTreeMap<String, PathBuf>>,
    /// Refuse (500) any range of `weights` starting at or after this many bytes, once.
    fail_from: Mutex<Option<u64>>,
    /// Every (file, range start) served.
    ranges: Mutex<Vec<(String, u64)>>,
}

type St = Arc<Hub>;

async fn info(
    State(hub): State<St>,
    UrlPath((org, name, _rev)): UrlPath<(String, String, String)>,
) -> Response {
    match hub.repos.get(&format!("{org}/{name}")) {
        Some(files) => Json(json!({
            "sha": COMMIT,
            "siblings": files.keys().map(|f| json!({"rfilename": f})).collect::<Vec<_>>(),
        }))
        .into_response(),
        None => (StatusCode::NOT_FOUND, "Repository not found").into_response(),
    }
}

async fn resolve(
    State(hub): State<St>,
    UrlPath((org, name, _rev, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let Some(path) = hub
        .repos
        .get(&format!("{org}/{name}"))
        .and_then(|r| r.get(&file))
    else {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    };
    let len = std::fs::metadata(path).unwrap().len();
    let (start, end) = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok()?.strip_prefix("bytes=")?.split_once('-'))
        .map(|(a, b)| (a.parse::<u64>().unwrap(), b.parse::<u64>().unwrap()))
        .unwrap_or((0, len - 1));
    let end = end.min(len - 1);
    if start > 0 && file.ends_with(".safetensors") {
        let mut fail = hub.fail_from.lock().unwrap();
        if fail.is_some_and(|f| start >= f) {
            *fail = None;
            return (StatusCode::INTERNAL_SERVER_ERROR, "cut off").into_response();
        }
    }
    hub.ranges.lock().unwrap().push((file.clone(), start));
    let mut buf = vec![0u8; (end + 1 - start) as usize];
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(path).unwrap();
        f.seek(SeekFrom::Start(start)).unwrap();
        f.read_exact(&mut buf).unwrap();
    }
    let etag = format!("\"{}-{len}\"", file.replace(['/', '.'], "-"));
    (
        StatusCode::PARTIAL_CONTENT,
        [
            ("etag", etag),
            ("x-repo-commit", COMMIT.to_string()),
            ("content-range", format!("bytes {start}-{end}/{len}")),
            ("accept-ranges", "bytes".to_string()),
        ],
        buf,
    )
        .into_response()
}

/// Serve `hub` on 127.0.0.1 from a thread of its own; its base URL.
fn serve(hub: St) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route("/api/models/{org}/{name}/revision/{rev}", get(info))
                .route("/{org}/{name}/resolve/{rev}/{*file}", get(resolve))
                .with_state(hub);
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

fn folder_files(dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut m: BTreeMap<String, PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    // A file a folder download must not fetch.
    m.insert("README.md".into(), dir.join("config.json"));
    m
}

fn hub() -> St {
    let smol_hf = hf_folder(SMOL, "SmolLM2-hf");
    let gguf = model_path(SMOL);
    let mut repos = BTreeMap::new();
    repos.insert("pot-test/SmolLM2".to_string(), folder_files(&smol_hf));
    repos.insert(
        "pot-test/SmolLM2-resume".to_string(),
        folder_files(&smol_hf),
    );
    let mut ggufs = BTreeMap::new();
    ggufs.insert("SmolLM2-135M-Instruct.Q4_1.gguf".to_string(), gguf.clone());
    ggufs.insert("SmolLM2-135M-Instruct.Q8_0.gguf".to_string(), gguf);
    repos.insert("pot-test/SmolLM2-GGUF".to_string(), ggufs);
    Arc::new(Hub {
        repos,
        fail_from: Mutex::new(None),
        ranges: Mutex::new(Vec::new()),
    })
}

fn tokens(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<Value>(&o.stdout).unwrap()["token_ids"].clone()
}

#[test]
fn hugging_face_ids_download_into_the_hub_cache_and_resume() {
    let hub = hub();
    let url = serve(hub.clone());
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str], offline: bool| {
        let mut c = pot();
        c.env("HF_HOME", home.path()).env("HF_ENDPOINT", &url);
        if offline {
            c.env("HF_HUB_OFFLINE", "1");
        }
        c.args(args).output().unwrap()
    };
    let want = tokens(
        &pot()
            .args(["tokenize", "--json", "--text", "Hello, hub!"])
            .arg(model_path(SMOL))
            .output()
            .unwrap(),
    );

    // A folder: its files (not the README) in the hub's cache layout.
    let o = run(
        &[
            "tokenize",
            "--json",
            "--text",
            "Hello, hub!",
            "pot-test/SmolLM2",
        ],
        false,
    );
    assert_eq!(tokens(&o), want);
    let repo = home.path().join("hub/models--pot-test--SmolLM2");
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    let snap = repo.join("snapshots").join(COMMIT);
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        assert!(snap.join(f).is_file(), "{f} not in the cache");
    }
    assert!(!snap.join("README.md").exists());

    // Cached: offline works, and asks nothing of the server.
    let served = hub.ranges.lock().unwrap().len();
    let o = run(
        &[
            "tokenize",
            "--json",
            "--text",
            "Hello, hub!",
            "pot-test/SmolLM2",
        ],
        true,
    );
    assert_eq!(tokens(&o), want);
    assert_eq!(hub.ranges.lock().unwrap().len(), served);

    // A GGUF by its quantization tag; the same weights as the local file.
    let o = run(
        &["fingerprint", "--json", "pot-test/SmolLM2-GGUF:Q4_1"],
        false,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: Value = serde_json::from_slice(&o.stdout).unwrap();
    let local: Value = serde_json::from_slice(
        &pot()
            .args(["fingerprint", "--json"])
            .arg(model_path(SMOL))
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(got["model"]["weight_hash"], local["model"]["weight_hash"]);
    // Two GGUF files and no tag: the error names them and the fix.
    let o = run(&["tokenize", "--text", "x", "pot-test/SmolLM2-GGUF"], false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("several GGUF") && err.contains("Q8_0"),
        "{err}"
    );

    // Cut off after two 10 MB chunks of the weights: a clear error, then a resumed download.
    *hub.fail_from.lock().unwrap() = Some(20_000_000);
    let o = run(
        &["tokenize", "--text", "x", "pot-test/SmolLM2-resume"],
        false,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(o.status.code(), Some(0), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("pot-test/SmolLM2-resume") && err.contains("500"),
        "{err}"
    );
    let before = hub.ranges.lock().unwrap().len();
    let o = run(
        &[
            "tokenize",
            "--json",
            "--text",
            "Hello, hub!",
            "pot-test/SmolLM2-resume",
        ],
        false,
    );
    assert_eq!(tokens(&o), want);
    let first_weights = hub.ranges.lock().unwrap()[before..]
        .iter()
        .find(|(f, s)| f.ends_with(".safetensors") && *s > 0)
        .map(|(_, s)| *s);
    assert_eq!(
        first_weights,
        Some(20_000_000),
        "the download did not resume"
    );

    // Not on the server, and not cached while offline: one line each, exit 2.
    let o = run(&["tokenize", "--text", "x", "pot-test/nothing-here"], false);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("not in the local cache") && err.contains("404"),
        "{err}"
    );
    let o = run(&["tokenize", "--text", "x", "pot-test/other"], true);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
}
