//! Every route and every kind of bad input, through the real router and a real
//! redb store, with `Router::oneshot`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::store::{AuthorKey, StoreOptions, StoreThread};

const TOKEN: &str = "test-token-0123456789";
const PORT: u16 = 7420;
const MAX_BODY: usize = 64 * 1024;

struct TestApi {
    router: Router,
    state: ApiState,
    _dir: tempfile::TempDir,
    _thread: Option<StoreThread>,
}

fn state(metrics: Arc<Metrics>) -> ApiState {
    ApiState::new(
        TOKEN.into(),
        metrics,
        NodeFacts {
            peer_id: "12D3KooWtest".into(),
            data_dir: "/tmp/test".into(),
            listen: vec![],
            mdns: false,
            api_url: format!("http://127.0.0.1:{PORT}"),
            port: PORT,
        },
        MAX_BODY,
    )
}

fn api() -> TestApi {
    api_and_store().0
}

/// The API over a fresh store, and the store's handle.
fn api_and_store() -> (TestApi, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let (store, thread) = Store::open(
        &dir.path().join("x.redb"),
        AuthorKey {
            peer_id: "12D3KooWtest".into(),
            public_key: pk(3),
            secret: [3; 32],
        },
        StoreOptions::default(),
        metrics.clone(),
    )
    .expect("store");
    let state = state(metrics);
    state.attach_store(store.clone());
    state.mark_ready();
    let api = TestApi {
        router: router(state.clone()),
        state,
        _dir: dir,
        _thread: Some(thread),
    };
    (api, store)
}

/// A request as a well-behaved local client sends it.
fn req(method: &str, uri: &str) -> axum::http::request::Builder {
    Request::builder()
        .method(method)
        .uri(uri)
        .header(header::HOST, format!("127.0.0.1:{PORT}"))
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
}

fn json_req(method: &str, uri: &str, body: &Value) -> Request<Body> {
    req(method, uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

impl TestApi {
    async fn send(&self, request: Request<Body>) -> (StatusCode, Bytes) {
        let resp = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body)
    }

    async fn call(&self, request: Request<Body>) -> (StatusCode, Value) {
        let (status, body) = self.send(request).await;
        let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (status, value)
    }

    async fn workspace(&self) -> String {
        let (status, body) = self
            .call(json_req(
                "POST",
                "/api/v1/workspaces",
                &json!({"name": "team"}),
            ))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("id").to_owned()
    }

    async fn put(&self, ws: &str, path: &str, bytes: &'static [u8]) -> StatusCode {
        let uri = format!("/api/v1/workspaces/{ws}/files/{path}");
        self.send(req("PUT", &uri).body(Body::from(bytes)).expect("request"))
            .await
            .0
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

#[tokio::test]
async fn health_is_public_and_503_until_the_store_is_loaded() {
    let loading = router(state(Arc::new(Metrics::new().expect("metrics"))));
    let request = Request::builder()
        .uri("/health")
        .header(header::HOST, "localhost")
        .body(Body::empty())
        .expect("request");
    let resp = loading.oneshot(request).await.expect("infallible");
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);

    let api = api();
    let request = Request::builder()
        .uri("/health")
        .header(header::HOST, "localhost")
        .body(Body::empty())
        .expect("request");
    let (status, body) = api.call(request).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_401() {
    let api = api();
    for auth in [
        None,
        Some("Bearer wrong"),
        Some(TOKEN),
        Some("Basic dXNlcjpwYXNz"),
    ] {
        let mut b = Request::builder()
            .uri("/api/v1/workspaces")
            .header(header::HOST, "127.0.0.1");
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        let (status, body) = api.call(b.body(Body::empty()).expect("request")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(code(&body), "unauthorized");
    }
    let request = Request::builder()
        .uri("/metrics")
        .header(header::HOST, "127.0.0.1")
        .body(Body::empty())
        .expect("request");
    assert_eq!(api.call(request).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn foreign_hosts_and_origins_are_refused_even_with_the_token() {
    let api = api();
    let cases = [
        ("evil.example", None, "forbidden_host"),
        ("evil.example:7420", None, "forbidden_host"),
        ("127.0.0.1.nip.io:7420", None, "forbidden_host"),
        (
            "127.0.0.1:7420",
            Some("http://evil.example"),
            "forbidden_origin",
        ),
        ("127.0.0.1:7420", Some("null"), "forbidden_origin"),
        (
            "127.0.0.1:7420",
            Some("http://127.0.0.1:9999"),
            "forbidden_origin",
        ),
        (
            "127.0.0.1:7420",
            Some("https://127.0.0.1:7420"),
            "forbidden_origin",
        ),
    ];
    for (host, origin, want) in cases {
        let mut b = Request::builder()
            .method("POST")
            .uri("/api/v1/workspaces")
            .header(header::HOST, host)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        let (status, body) = api
            .call(b.body(Body::from(r#"{"name":"x"}"#)).expect("request"))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{host} {origin:?}");
        assert_eq!(code(&body), want);
    }
    let no_host = Request::builder()
        .uri("/health")
        .body(Body::empty())
        .expect("request");
    assert_eq!(api.call(no_host).await.0, StatusCode::FORBIDDEN);
    // Nothing was created by the refused requests.
    let (_, list) = api
        .call(
            req("GET", "/api/v1/workspaces")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(list["workspaces"].as_array().map(Vec::len), Some(0));
    // The API's own origin is fine.
    let own = req("GET", "/api/v1/workspaces")
        .header(header::ORIGIN, format!("http://localhost:{PORT}"))
        .body(Body::empty())
        .expect("request");
    assert_eq!(api.call(own).await.0, StatusCode::OK);
}

#[tokio::test]
async fn invalid_json_is_400_and_a_wrong_content_type_415() {
    let api = api();
    let bad = req("POST", "/api/v1/workspaces")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"name\": "))
        .expect("request");
    let (status, body) = api.call(bad).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );

    for wrong in [
        json!({"name": 5}),
        json!({"name": "x", "extra": 1}),
        json!([1]),
    ] {
        let (status, body) = api
            .call(json_req("POST", "/api/v1/workspaces", &wrong))
            .await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::BAD_REQUEST, "invalid_json"),
            "{wrong}"
        );
    }
    let (status, body) = api
        .call(json_req(
            "POST",
            "/api/v1/workspaces",
            &json!({"name": "  "}),
        ))
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_name")
    );

    let plain = req("POST", "/api/v1/workspaces")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"name":"x"}"#))
        .expect("request");
    assert_eq!(api.call(plain).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn oversize_bodies_are_413() {
    let api = api();
    let ws = api.workspace().await;
    let big = vec![b'a'; MAX_BODY + 1];
    let put = req("PUT", &format!("/api/v1/workspaces/{ws}/files/big.txt"))
        .body(Body::from(big.clone()))
        .expect("request");
    let (status, body) = api.call(put).await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
    );
    let splice = req("POST", &format!("/api/v1/workspaces/{ws}/splice"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .expect("request");
    assert_eq!(api.call(splice).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    // Nothing was stored.
    let (_, files) = api
        .call(
            req("GET", &format!("/api/v1/workspaces/{ws}/files"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(files["files"].as_array().map(Vec::len), Some(0));
}

#[tokio::test]
async fn traversal_nul_and_malformed_paths_are_400() {
    let api = api();
    let ws = api.workspace().await;
    for path in [
        "a/../../etc/passwd",
        "..",
        "a/%2e%2e/b",
        "a%00b",
        "a//b",
        "a%5Cb",
        "./a",
    ] {
        let status = api.put(&ws, path, b"x").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        let get = req("GET", &format!("/api/v1/workspaces/{ws}/files/{path}"))
            .body(Body::empty())
            .expect("request");
        assert_eq!(api.call(get).await.0, StatusCode::BAD_REQUEST, "{path}");
    }
    let (status, body) = api
        .call(json_req(
            "POST",
            &format!("/api/v1/workspaces/{ws}/splice"),
            &json!({"path": "../x", "pos": 0, "insert": "a"}),
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let long = "a".repeat(2000);
    assert_eq!(api.put(&ws, &long, b"x").await, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn unknown_and_malformed_workspaces() {
    let api = api();
    let missing = "00112233445566778899aabbccddeeff";
    for uri in [
        format!("/api/v1/workspaces/{missing}"),
        format!("/api/v1/workspaces/{missing}/files"),
        format!("/api/v1/workspaces/{missing}/files/a.txt"),
    ] {
        let (status, body) = api
            .call(req("GET", &uri).body(Body::empty()).expect("request"))
            .await;
        assert_eq!(
            (status, code(&body)),
            (StatusCode::NOT_FOUND, "workspace_not_found"),
            "{uri}"
        );
    }
    let (status, body) = api
        .call(
            req("GET", "/api/v1/workspaces/not-an-id")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::BAD_REQUEST, "invalid_workspace_id")
    );
    let ws = api.workspace().await;
    let (status, body) = api
        .call(
            req("GET", &format!("/api/v1/workspaces/{ws}/files/none.txt"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "file_not_found")
    );
}

#[tokio::test]
async fn splices_out_of_range_or_on_binary_files_are_refused() {
    let api = api();
    let ws = api.workspace().await;
    assert_eq!(api.put(&ws, "t.txt", b"hello").await, StatusCode::OK);
    assert_eq!(api.put(&ws, "b.bin", b"\xff\xfe").await, StatusCode::OK);
    let uri = format!("/api/v1/workspaces/{ws}/splice");
    let cases = [
        (
            json!({"path": "t.txt", "pos": 6, "insert": "x"}),
            StatusCode::BAD_REQUEST,
            "out_of_range",
        ),
        (
            json!({"path": "t.txt", "pos": 2, "delete": 4}),
            StatusCode::BAD_REQUEST,
            "out_of_range",
        ),
        (
            json!({"path": "t.txt", "edits": [{"pos": 0, "insert": "ab"}, {"pos": 8, "delete": 0}]}),
            StatusCode::BAD_REQUEST,
            "out_of_range",
        ),
        (
            json!({"path": "t.txt"}),
            StatusCode::BAD_REQUEST,
            "invalid_splice",
        ),
        (
            json!({"path": "t.txt", "edits": []}),
            StatusCode::BAD_REQUEST,
            "invalid_splice",
        ),
        (
            json!({"path": "b.bin", "pos": 0, "insert": "x"}),
            StatusCode::CONFLICT,
            "not_text",
        ),
        (
            json!({"path": "nope.txt", "pos": 0, "insert": "x"}),
            StatusCode::NOT_FOUND,
            "file_not_found",
        ),
    ];
    for (body, want_status, want_code) in cases {
        let (status, answer) = api.call(json_req("POST", &uri, &body)).await;
        assert_eq!((status, code(&answer)), (want_status, want_code), "{body}");
    }
    let get = req("GET", &format!("/api/v1/workspaces/{ws}/files/t.txt"))
        .body(Body::empty())
        .expect("request");
    assert_eq!(
        api.send(get).await.1,
        Bytes::from_static(b"hello"),
        "refused splices changed nothing"
    );
}

#[tokio::test]
async fn the_whole_file_lifecycle_through_the_api() {
    let api = api();
    let ws = api.workspace().await;
    assert_eq!(
        api.put(&ws, "src/app.py", b"def f():\n    pass\n").await,
        StatusCode::OK
    );
    let uri = format!("/api/v1/workspaces/{ws}/splice");
    let (status, body) = api
        .call(json_req(
            "POST",
            &uri,
            &json!({"path": "src/app.py", "edits": [
                {"pos": 4, "delete": 1, "insert": "main"},
                {"pos": 0, "insert": "# ✓\n"}
            ]}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["edits_applied"], 2);
    let get = req("GET", &format!("/api/v1/workspaces/{ws}/files/src/app.py"))
        .body(Body::empty())
        .expect("request");
    let resp = api.router.clone().oneshot(get).await.expect("infallible");
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(bytes, Bytes::from("# ✓\ndef main():\n    pass\n"));

    let (status, detail) = api
        .call(
            req("GET", &format!("/api/v1/workspaces/{ws}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["files"], 1);
    assert_eq!(detail["role"], "admin");
    assert!(
        detail["heads"].as_array().is_some_and(|h| h.len() == 3),
        "{detail}"
    );

    let rm = req(
        "DELETE",
        &format!("/api/v1/workspaces/{ws}/files/src/app.py"),
    )
    .body(Body::empty())
    .expect("request");
    assert_eq!(api.call(rm).await.0, StatusCode::NO_CONTENT);
    let get = req("GET", &format!("/api/v1/workspaces/{ws}/files/src/app.py"))
        .body(Body::empty())
        .expect("request");
    assert_eq!(api.call(get).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let api = api();
    let (status, body) = api
        .call(
            req("GET", "/api/v1/nope")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!((status, code(&body)), (StatusCode::NOT_FOUND, "not_found"));
    let (status, body) = api
        .call(
            req("DELETE", "/api/v1/workspaces")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test]
async fn node_info_and_metrics_report_what_happened() {
    let api = api();
    api.workspace().await;
    let (status, info) = api
        .call(
            req("GET", "/api/v1/node")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(info["workspaces"], 1);
    assert_eq!(
        info["store"]["schema_version"],
        crate::store::tables::SCHEMA_VERSION
    );
    let (status, text) = api
        .send(req("GET", "/metrics").body(Body::empty()).expect("request"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text.to_vec()).expect("utf8");
    assert!(
        text.contains(
            r#"xencode_api_requests_total{method="POST",route="/api/v1/workspaces",status="201"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"xencode_store_commits_total{outcome="ok"}"#));
    assert!(text.contains("xencode_workspaces 1"));
    assert!(text.contains("xencode_store_commit_duration_seconds_bucket"));
}

#[tokio::test]
async fn the_dashboard_page_is_public_with_a_strict_policy() {
    let api = api();
    let request = Request::builder()
        .uri("/")
        .header(header::HOST, "localhost:7420")
        .body(Body::empty())
        .expect("request");
    let resp = api
        .router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .is_ok_and(|csp| csp.contains("default-src 'self'"))
    );
}

fn pk(n: u8) -> [u8; 32] {
    ed25519_dalek::SigningKey::from_bytes(&[n; 32])
        .verifying_key()
        .to_bytes()
}

#[tokio::test]
async fn analyze_stores_the_result_and_reanalysis_reuses_the_parse() {
    let api = api();
    let ws = api.workspace().await;
    let src: &'static [u8] = b"import os\n\ndef run(cmd):\n    os.system(cmd)\n";
    assert_eq!(api.put(&ws, "tools/run.py", src).await, StatusCode::OK);
    let analyze = format!("/api/v1/workspaces/{ws}/analyze");
    let (status, body) = api
        .call(json_req("POST", &analyze, &json!({"path": "tools/run.py"})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["language"], "python");
    assert_eq!(body["security_issues"][0]["cwe_id"], "CWE-78");
    assert_eq!(body["security_issues"][0]["line"], 4);
    assert_eq!(body["outline"][0]["name"], "run");
    assert_eq!(body["ai"]["status"], "not_requested");
    assert_eq!(body["stored"], true);
    assert_eq!(body["incremental"], false);
    assert_eq!(
        body["content_hash"],
        blake3::hash(src).to_hex().to_string().as_str()
    );
    // An edit, then analysis again: the previous tree is reused.
    let (status, _) = api
        .call(json_req(
            "POST",
            &format!("/api/v1/workspaces/{ws}/splice"),
            &json!({"path": "tools/run.py", "pos": 0, "insert": "x = eval('1')\n"}),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body) = api
        .call(json_req("POST", &analyze, &json!({"path": "tools/run.py"})))
        .await;
    assert_eq!(body["incremental"], true, "{body}");
    let cwes: Vec<&str> = body["security_issues"]
        .as_array()
        .expect("issues")
        .iter()
        .filter_map(|i| i["cwe_id"].as_str())
        .collect();
    assert_eq!(cwes, vec!["CWE-95", "CWE-78"]);
    // Stored in the workspace, latest result per path.
    let (status, list) = api
        .call(
            req("GET", &format!("/api/v1/workspaces/{ws}/analyses"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["analyses"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["analyses"][0]["path"], "tools/run.py");
    assert_eq!(
        list["analyses"][0]["security_issues"][0]["cwe_id"],
        "CWE-95"
    );
}

#[tokio::test]
async fn analyze_refuses_what_it_cannot_analyse() {
    let api = api();
    let ws = api.workspace().await;
    assert_eq!(api.put(&ws, "notes.txt", b"hello").await, StatusCode::OK);
    assert_eq!(
        api.put(&ws, "blob.py", b"\xff\xfe\x00").await,
        StatusCode::OK
    );
    let analyze = format!("/api/v1/workspaces/{ws}/analyze");
    for (body, status, want) in [
        (
            json!({"path": "notes.txt"}),
            StatusCode::BAD_REQUEST,
            "unsupported_language",
        ),
        (
            json!({"path": "missing.py"}),
            StatusCode::NOT_FOUND,
            "file_not_found",
        ),
        (json!({"path": "blob.py"}), StatusCode::CONFLICT, "not_text"),
        (
            json!({"path": "../x.py"}),
            StatusCode::BAD_REQUEST,
            "invalid_file_path",
        ),
        (
            json!({"file": "x.py"}),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
    ] {
        let (got, resp) = api.call(json_req("POST", &analyze, &body)).await;
        assert_eq!((got, code(&resp)), (status, want), "{body}: {resp}");
    }
    let unknown = "/api/v1/workspaces/00000000000000000000000000000000/analyze";
    let (got, resp) = api
        .call(json_req("POST", unknown, &json!({"path": "a.py"})))
        .await;
    assert_eq!(
        (got, code(&resp)),
        (StatusCode::NOT_FOUND, "workspace_not_found")
    );
}

/// Every route the router answers is in the OpenAPI document, and every
/// operation in the document reaches a handler (never the not-found or
/// method-not-allowed fallback).
#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let api = api();
    let (status, doc) = api
        .call(
            req("GET", "/api/v1/openapi.json")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, methods) in paths {
        for (method, op) in methods.as_object().expect("methods") {
            operations += 1;
            assert!(
                op["summary"].as_str().is_some_and(|s| !s.is_empty()),
                "{method} {path}"
            );
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
            let uri = path
                .replace("{id}", "00112233445566778899aabbccddeeff")
                .replace("{path}", "a.txt")
                .replace("{name}", "app.js");
            let request = req(&method.to_uppercase(), &uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .expect("request");
            let resp = api
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("infallible");
            let status = resp.status();
            let streaming = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|t| t.as_bytes().starts_with(b"text/event-stream"));
            // An event stream never ends: its status and type are the answer.
            let body = if streaming {
                Bytes::new()
            } else {
                resp.into_body().collect().await.expect("body").to_bytes()
            };
            let code = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                .unwrap_or_default();
            assert!(
                code != "not_found" && code != "method_not_allowed",
                "{method} {uri} is documented but not routed ({status}, {code})"
            );
        }
    }
    assert!(operations >= 30, "{operations} operations");
    // Schemas of the bodies are included and referenced.
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for name in [
        "SpliceRequest",
        "WorkspaceDetail",
        "NodeEvent",
        "AuditLog",
        "ErrorBody",
    ] {
        assert!(schemas.contains_key(name), "schema {name}");
    }
    assert_eq!(
        doc["paths"]["/api/v1/workspaces/{id}/splice"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"]["$ref"],
        "#/components/schemas/SpliceRequest"
    );
}

/// Routes can only be added through the documenting builder: the API's
/// sources hold no direct axum route registration.
#[test]
fn no_route_bypasses_the_openapi_builder() {
    let sources = [
        ("api.rs", include_str!("../api.rs")),
        ("routes.rs", include_str!("routes.rs")),
        ("analysis.rs", include_str!("analysis.rs")),
        ("events.rs", include_str!("events.rs")),
        ("session.rs", include_str!("session.rs")),
        ("guard.rs", include_str!("guard.rs")),
    ];
    for (name, text) in sources {
        for needle in [".route(\"", ".route_service(", ".nest(", ".nest_service("] {
            assert!(
                !text.contains(needle),
                "{name} registers a route with {needle}"
            );
        }
    }
}

mod editors;
