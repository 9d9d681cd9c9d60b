//! The dashboard's login and session against a real node: the one-time login
//! URL, the cookie's attributes, CSRF tokens, DNS rebinding and cross-origin
//! requests, all refused where they must be.

use std::io::{Read, Write};

use reqwest::StatusCode;
use reqwest::header::{COOKIE, HeaderMap, HeaderValue, SET_COOKIE};
use xencode_tests::{Node, last_line, ok_stdout};

fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Sends a raw HTTP/1.1 request (reqwest cannot send a foreign `Host`).
fn raw(api_url: &str, request: &str) -> String {
    let authority = api_url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(authority).expect("connect");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn error_code(body: &serde_json::Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

/// Logs in through a fresh login URL; returns the `name=value` cookie.
async fn log_in(node: &Node) -> String {
    let out = node.cli(&["dashboard", "--no-open"]);
    let url = last_line(&out);
    ok_stdout(&out);
    let resp = plain_client().get(&url).send().await.expect("login");
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let set = resp
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("a cookie is set")
        .to_owned();
    set.split(';').next().expect("name=value").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_cookie_and_csrf_hold() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start(&tmp.path().join("n")).expect("node");
    let http = plain_client();
    let api = |p: &str| format!("{}{p}", node.api_url);

    // The login URL works once; the cookie is HttpOnly and SameSite=Strict.
    let out = node.cli(&["dashboard", "--no-open"]);
    let url = last_line(&out);
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let first = http.get(&url).send().await.expect("login");
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    assert_eq!(first.headers()["location"], "/");
    let set = first.headers()[SET_COOKIE].to_str().expect("ascii");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attribute), "{set} lacks {attribute}");
    }
    let cookie = set.split(';').next().expect("pair").to_owned();
    let replay = http.get(&url).send().await.expect("replay");
    assert_eq!(
        replay.status(),
        StatusCode::UNAUTHORIZED,
        "replayed login URL"
    );
    let body: serde_json::Value = replay.json().await.expect("json");
    assert_eq!(error_code(&body), "login_link_invalid");
    let guessed = http.get(api("/login?code=00")).send().await.expect("guess");
    assert_eq!(guessed.status(), StatusCode::UNAUTHORIZED);

    // Reads work with the cookie alone.
    let mut with_cookie = HeaderMap::new();
    with_cookie.insert(COOKIE, HeaderValue::from_str(&cookie).expect("cookie"));
    let session: serde_json::Value = http
        .get(api("/api/v1/session"))
        .headers(with_cookie.clone())
        .send()
        .await
        .expect("session")
        .json()
        .await
        .expect("json");
    assert_eq!(session["auth"], "cookie");
    assert_eq!(session["peer_id"], node.peer_id.as_str());
    let csrf = session["csrf_token"].as_str().expect("csrf").to_owned();
    let list = http
        .get(api("/api/v1/workspaces"))
        .headers(with_cookie.clone())
        .send()
        .await
        .expect("list");
    assert_eq!(list.status(), StatusCode::OK);

    // A write without the CSRF token, or with a wrong one, is refused and
    // changes nothing.
    let create = |csrf: Option<&str>| {
        let mut req = http
            .post(api("/api/v1/workspaces"))
            .headers(with_cookie.clone())
            .json(&serde_json::json!({"name": "by-cookie"}));
        if let Some(c) = csrf {
            req = req.header("X-CSRF-Token", c);
        }
        req.send()
    };
    let missing = create(None).await.expect("post");
    assert_eq!(missing.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = missing.json().await.expect("json");
    assert_eq!(error_code(&body), "csrf_token_missing");
    let wrong = create(Some("0000")).await.expect("post");
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = wrong.json().await.expect("json");
    assert_eq!(error_code(&body), "csrf_token_wrong");
    assert_eq!(last_line(&node.cli(&["workspace", "list"])), "");
    // With it, the write goes through.
    let ok = create(Some(&csrf)).await.expect("post");
    assert_eq!(ok.status(), StatusCode::CREATED);

    // A browser session cannot mint login links for others, nor take a
    // backup of the whole store.
    let mint = http
        .post(api("/api/v1/dashboard/login"))
        .headers(with_cookie.clone())
        .header("X-CSRF-Token", &csrf)
        .send()
        .await
        .expect("mint");
    assert_eq!(mint.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = mint.json().await.expect("json");
    assert_eq!(error_code(&body), "token_required");
    let backup = http
        .get(api("/api/v1/backup"))
        .headers(with_cookie.clone())
        .send()
        .await
        .expect("backup");
    assert_eq!(backup.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = backup.json().await.expect("json");
    assert_eq!(error_code(&body), "token_required");

    // Cross-origin: a page elsewhere posting with the cookie and a token.
    let cross = http
        .post(api("/api/v1/workspaces"))
        .headers(with_cookie.clone())
        .header("X-CSRF-Token", &csrf)
        .header("Origin", "http://evil.example")
        .json(&serde_json::json!({"name": "cross"}))
        .send()
        .await
        .expect("post");
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = cross.json().await.expect("json");
    assert_eq!(error_code(&body), "forbidden_origin");
    // Same host, another port: another origin too.
    let port_origin = http
        .post(api("/api/v1/workspaces"))
        .headers(with_cookie.clone())
        .header("X-CSRF-Token", &csrf)
        .header("Origin", "http://127.0.0.1:1")
        .json(&serde_json::json!({"name": "cross"}))
        .send()
        .await
        .expect("post");
    assert_eq!(port_origin.status(), StatusCode::FORBIDDEN);

    // DNS rebinding: a foreign name resolving to 127.0.0.1, with the cookie.
    let port = node.api_url.rsplit(':').next().expect("port");
    for path in ["/api/v1/workspaces", "/login?code=x", "/"] {
        let resp = raw(
            &node.api_url,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: rebind.evil.example:{port}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            ),
        );
        assert!(resp.starts_with("HTTP/1.1 403"), "{path}: {resp}");
        assert!(resp.contains("forbidden_host"), "{resp}");
    }

    // Logging out ends the session.
    let out = http
        .delete(api("/api/v1/session"))
        .headers(with_cookie.clone())
        .header("X-CSRF-Token", &csrf)
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let after = http
        .get(api("/api/v1/workspaces"))
        .headers(with_cookie)
        .send()
        .await
        .expect("after");
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    // A second session is independent of the first.
    let again = log_in(&node).await;
    assert_ne!(again, cookie);
}
