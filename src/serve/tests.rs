//! The server's router driven in process (tower's oneshot) over a tiny random-weight model.

use super::*;
use serde_json::Value;

#[test]
fn a_chat_without_a_template_is_the_request_s_fault() {
    let e = chat_error(ModelError::NoChatTemplate {
        spec: "base.gguf".into(),
    });
    assert_eq!((e.status, e.param.as_deref()), (400, Some("messages")));
    assert!(e.message.contains("no chat template") && e.message.contains("completions"));
    let e = chat_error(ModelError::EmptyPrompt);
    assert_eq!(e.status, 500);
}

#[test]
fn an_answered_error_keeps_its_cause() {
    let e = chat_error(ModelError::Tokenize {
        action: "encode the text",
        source: "invalid byte 0xff".into(),
    });
    assert_eq!(e.status, 500);
    assert!(
        e.message.contains("cannot encode the text") && e.message.ends_with(": invalid byte 0xff"),
        "{}",
        e.message
    );
}

/// The router over the tiny Llama (`model::tiny`), driven in process (no socket, no
/// binary): models, a completion with logprobs, a chat to a model without a template,
/// a malformed body, an unknown route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_answers_in_process_over_a_tiny_model() {
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    std::fs::write(&path, crate::model::tiny::llama_gguf(3)).unwrap();
    let (model, identity) = load_identified(&path, LoadOptions::default()).unwrap();
    let cfg = ServeConfig {
        model: path.display().to_string(),
        name: Some("tiny".into()),
        host: "127.0.0.1".into(),
        port: 0,
        max_queue: 4,
        max_batch: 2,
        max_tokens_limit: 64,
        max_body_bytes: 1 << 16,
        shutdown_grace: Duration::from_secs(1),
        kernels: Kernels::Quantized,
        api_key: None,
        node_key: None,
        store: None,
        retention: Duration::from_secs(60),
        store_max_bytes: 1 << 20,
    };
    let (state, worker, cancel) = start(
        Loaded {
            model: Arc::new(model),
            identity,
            name: "tiny".into(),
            prover: None,
            store: None,
        },
        cfg,
    );
    let app = router(state.clone());
    let call = |method: &str, uri: &str, body: &str| {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        let app = app.clone();
        async move {
            let r = app.oneshot(req).await.unwrap();
            let status = r.status().as_u16();
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let (st, v) = call("GET", "/v1/models", "").await;
    assert_eq!(
        (st, v["data"][0]["id"].as_str()),
        (200, Some("tiny")),
        "{v}"
    );
    let (st, v) = call(
        "POST",
        "/v1/completions",
        r#"{"model":"tiny","prompt":[1,3,4],"max_tokens":4,"temperature":0,"logprobs":2}"#,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let n = lp["tokens"].as_array().unwrap().len();
    assert!((1..=4).contains(&n), "{v}");
    assert!(lp["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x.as_f64().unwrap() <= 0.0));
    assert_eq!(v["usage"]["prompt_tokens"], 3, "{v}");
    // Chat's spelling on completions (some clients send it) asks the same; both at once is
    // a 400 naming the field.
    let (st, v) = call(
        "POST",
        "/v1/completions",
        r#"{"model":"tiny","prompt":[1,3,4],"max_tokens":2,"temperature":0,"logprobs":true,"top_logprobs":2}"#,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let top = v["choices"][0]["logprobs"]["top_logprobs"][0]
        .as_object()
        .unwrap();
    assert!((1..=2).contains(&top.len()), "{v}");
    let (st, v) = call(
        "POST",
        "/v1/completions",
        r#"{"model":"tiny","prompt":[1,3,4],"max_tokens":2,"logprobs":2,"top_logprobs":2}"#,
    )
    .await;
    assert_eq!(
        (st, v["error"]["param"].as_str()),
        (400, Some("top_logprobs")),
        "{v}"
    );
    let (st, v) = call(
        "POST",
        "/v1/chat/completions",
        r#"{"model":"tiny","messages":[{"role":"user","content":"a b"}]}"#,
    )
    .await;
    assert_eq!(st, 400, "a model without a chat template: {v}");
    assert_eq!(v["error"]["param"], "messages", "{v}");
    let (st, v) = call("POST", "/v1/completions", "{not json").await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("invalid_json")),
        "{v}"
    );
    let (st, _) = call("GET", "/v1/nowhere", "").await;
    assert_eq!(st, 404);
    cancel.store(true, Ordering::SeqCst);
    drop(app);
    drop(state);
    tokio::task::spawn_blocking(move || worker.join().unwrap())
        .await
        .unwrap();
}
