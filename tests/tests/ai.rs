//! AI reviews through a real node and ollama-rs, against a double that speaks
//! Ollama's HTTP wire format on a real socket: normal, garbage, slow and
//! absent servers. The static analysis always comes; `ai.status` says why
//! there is no review; secrets never reach the model.

use std::path::Path;
use std::time::Duration;

use xencode_tests::ollama_double::{Mode, OllamaDouble, REVIEW};
use xencode_tests::{Node, free_port, last_line, put};

const SOURCE: &str = "import pickle\n\nAPI_KEY = \"sk-live-0123456789abcdef\"\n\ndef load(blob):\n    return pickle.loads(blob)\n";

fn node_with_ollama(dir: &Path, host: &str) -> Node {
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(
        dir.join("config.toml"),
        format!("[analysis]\nollama_host = \"{host}\"\nai_timeout_secs = 2\n"),
    )
    .expect("config");
    Node::start(dir).expect("node")
}

fn analyze(node: &Node, ws: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json", "analyze", ws, "app/load.py", "--ai"];
    args.extend_from_slice(extra);
    let out = node.cli(&args);
    assert!(
        out.status.success(),
        "exit 0 whatever Ollama does: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_come_from_ollama_with_secrets_redacted_and_failures_as_statuses() {
    let double = OllamaDouble::start().expect("double");
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = node_with_ollama(&tmp.path().join("a"), &double.url);
    let ws = last_line(&node.cli(&["workspace", "create", "ai"]));
    assert_eq!(
        put(&node, &ws, "app/load.py", SOURCE).await,
        reqwest::StatusCode::OK
    );

    // Models: listed, and the preferred one is the default.
    let models: serde_json::Value =
        serde_json::from_slice(&node.cli(&["--json", "models"]).stdout).expect("models");
    assert_eq!(models["status"], "ok");
    assert_eq!(models["models"].as_array().map(Vec::len), Some(2));
    assert_eq!(models["default_model"], "qwen2.5-coder:7b");
    let text = String::from_utf8_lossy(&node.cli(&["models"]).stdout).into_owned();
    assert!(
        text.contains("qwen2.5-coder:7b  4.7 GB  (default)"),
        "{text}"
    );

    // A review: the preferred model, the double's text, stored with provenance.
    let r = analyze(&node, &ws, &[]);
    assert_eq!(r["ai"]["status"], "ok", "{r}");
    assert_eq!(r["ai"]["model"], "qwen2.5-coder:7b");
    assert_eq!(r["ai"]["text"], REVIEW);
    assert_eq!(r["model"], "qwen2.5-coder:7b");
    assert!(
        r["model_digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("xencode-b3:")),
        "{r}"
    );
    assert_eq!(r["security_issues"][0]["cwe_id"], "CWE-798");
    // What the model was sent: the findings, the code — and no secret.
    let sent = double.bodies();
    assert_eq!(sent.len(), 1);
    let prompt = serde_json::from_str::<serde_json::Value>(&sent[0]).expect("json")["prompt"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        !prompt.contains("sk-live-0123456789abcdef"),
        "the secret reached the model:\n{prompt}"
    );
    assert!(
        prompt.contains("[REDACTED]")
            && prompt.contains("CWE-502")
            && prompt.contains("pickle.loads"),
        "{prompt}"
    );
    // The same request again: answered from the redb cache, Ollama not asked.
    let again = analyze(&node, &ws, &[]);
    assert_eq!(again["ai"]["text"], REVIEW);
    assert_eq!(
        double.bodies().len(),
        1,
        "a cache hit does not reach Ollama"
    );
    assert_eq!(
        node.metric(r#"xencode_ai_cache_total{result="hit"}"#).await,
        1.0
    );
    assert_eq!(
        node.metric(r#"xencode_ai_cache_total{result="miss"}"#)
            .await,
        1.0
    );
    // Streaming: with Accept: text/event-stream the review arrives token by
    // token over SSE (Ollama streams NDJSON), then the stored record.
    let streamed = format!("{SOURCE}# streamed\n");
    assert_eq!(
        put(&node, &ws, "app/load.py", &streamed).await,
        reqwest::StatusCode::OK
    );
    let body = node
        .http()
        .post(format!("{}/api/v1/workspaces/{ws}/analyze", node.api_url))
        .header("accept", "text/event-stream")
        .json(&serde_json::json!({"path": "app/load.py", "ai": true}))
        .send()
        .await
        .expect("sse")
        .text()
        .await
        .expect("body");
    let events: Vec<(String, serde_json::Value)> = body
        .split("\n\n")
        .filter_map(|block| {
            let event = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))?
                .to_owned();
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect();
            Some((event, serde_json::from_str(&data).ok()?))
        })
        .collect();
    assert_eq!(
        events.first().map(|e| e.0.as_str()),
        Some("analysis"),
        "{body}"
    );
    assert_eq!(events[0].1["ai"]["status"], "pending");
    let tokens: Vec<&str> = events
        .iter()
        .filter(|e| e.0 == "token")
        .filter_map(|e| e.1.as_str())
        .collect();
    assert!(tokens.len() >= 3, "token by token: {tokens:?}");
    assert_eq!(tokens.concat(), REVIEW);
    let done = &events.last().expect("events").1;
    assert_eq!(events.last().map(|e| e.0.as_str()), Some("done"));
    assert_eq!(
        (done["ai"]["status"].as_str(), done["ai"]["text"].as_str()),
        (Some("ok"), Some(REVIEW))
    );
    assert_eq!(done["stored"], true);
    assert!(
        double
            .bodies()
            .last()
            .is_some_and(|b| b.contains("\"stream\":true"))
    );

    // A document summary, from the same Ollama, with secrets redacted.
    let notes = tmp.path().join("design.md");
    std::fs::write(
        &notes,
        "# Sync design\nChanges travel signed.\npassword = \"hunter2hunter2\"\n",
    )
    .expect("write");
    let out = node.cli(&[
        "--json",
        "doc",
        "add",
        &ws,
        &notes.display().to_string(),
        "--ai",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["summary"]["status"], "ok", "{doc}");
    assert_eq!(doc["summary"]["text"], REVIEW);
    let prompt = serde_json::from_str::<serde_json::Value>(
        &double.bodies().last().cloned().unwrap_or_default(),
    )
    .map(|v| v["prompt"].as_str().unwrap_or_default().to_owned())
    .unwrap_or_default();
    assert!(
        prompt.contains("Changes travel signed.") && prompt.contains("Summarise"),
        "{prompt}"
    );
    assert!(
        !prompt.contains("hunter2hunter2"),
        "the password reached the model:\n{prompt}"
    );

    // A model asked for by name.
    let r = analyze(&node, &ws, &["--model", "llama3.2:1b"]);
    assert_eq!(r["ai"]["model"], "llama3.2:1b");
    let r = analyze(&node, &ws, &["--model", "phi3"]);
    assert!(
        r["ai"]["status"]
            .as_str()
            .is_some_and(|s| s.contains("ollama pull phi3")),
        "{r}"
    );

    // Garbage, then a server slower than the 2 s limit: statuses, not errors.
    // (Each with an edited file, so the prompt is new and the cache misses.)
    double.set_mode(Mode::Garbage);
    let v2 = format!("{SOURCE}# v2\n");
    assert_eq!(
        put(&node, &ws, "app/load.py", &v2).await,
        reqwest::StatusCode::OK
    );
    let r = analyze(&node, &ws, &[]);
    assert!(
        r["ai"]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("error:")),
        "{r}"
    );
    assert!(r["ai"]["text"].is_null());
    assert_eq!(
        r["security_issues"][1]["cwe_id"], "CWE-502",
        "static results still come"
    );
    double.set_mode(Mode::Slow(Duration::from_secs(4)));
    let v3 = format!("{SOURCE}# v3\n");
    assert_eq!(
        put(&node, &ws, "app/load.py", &v3).await,
        reqwest::StatusCode::OK
    );
    let r = analyze(&node, &ws, &[]);
    assert!(
        r["ai"]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("timeout:")),
        "{r}"
    );

    // No Ollama at all.
    let absent = node_with_ollama(
        &tmp.path().join("b"),
        &format!("http://127.0.0.1:{}", free_port()),
    );
    let ws = last_line(&absent.cli(&["workspace", "create", "ai"]));
    assert_eq!(
        put(&absent, &ws, "app/load.py", SOURCE).await,
        reqwest::StatusCode::OK
    );
    let r = analyze(&absent, &ws, &[]);
    assert!(
        r["ai"]["status"]
            .as_str()
            .is_some_and(|s| s.starts_with("unavailable:")),
        "{r}"
    );
    assert_eq!(r["outline"][0]["name"], "load");
    let out = absent.cli(&["models"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ollama serve"));
}
