//! `GET /api/v1/events` between real nodes: a viewer's stream shows a remote
//! edit as it lands, and nothing from a workspace it is not a member of.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use xencode_tests::{Node, invite_and_join, last_line, put, splice, wait_for};

const WAIT: Duration = Duration::from_secs(60);

/// Reads an SSE stream in the background; every event as `(name, data)`.
fn follow(node: &Node, query: &str) -> Arc<Mutex<Vec<(String, serde_json::Value)>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let http = node.http();
    let url = format!("{}/api/v1/events{query}", node.api_url);
    tokio::spawn(async move {
        let mut resp = http.get(url).send().await.expect("events");
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .is_ok_and(|t| t.starts_with("text/event-stream"))
        );
        let mut buf = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(n) = line.strip_prefix("event:") {
                        name = n.trim().to_owned();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim_start());
                    }
                }
                if let Ok(v) = serde_json::from_str(&data) {
                    sink.lock().expect("lock").push((name, v));
                }
            }
        }
    });
    seen
}

fn has(
    seen: &Mutex<Vec<(String, serde_json::Value)>>,
    f: impl Fn(&str, &serde_json::Value) -> bool,
) -> bool {
    seen.lock().expect("lock").iter().any(|(n, v)| f(n, v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viewer_sees_remote_edits_and_nothing_else() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::start(&tmp.path().join("a")).expect("a");
    let b = Node::start(&tmp.path().join("b")).expect("b");
    let shared = last_line(&a.cli(&["workspace", "create", "shared"]));
    let private = last_line(&a.cli(&["workspace", "create", "private"]));
    let a_events = follow(&a, "");
    let b_events = follow(&b, "");
    let b_filtered = follow(&b, &format!("?workspace={private}"));
    invite_and_join(&a, &shared, &b, "viewer");
    assert!(
        wait_for(WAIT, || async {
            b.get_json(&format!("/api/v1/workspaces/{shared}")).await["name"] == "shared"
        })
        .await
    );

    // A writes to the private workspace, then to the shared one.
    assert!(
        put(&a, &private, "secret.txt", "not for B")
            .await
            .is_success()
    );
    assert!(
        splice(&a, &private, "secret.txt", 0, "really ")
            .await
            .is_success()
    );
    assert!(put(&a, &shared, "notes.md", "").await.is_success());
    assert!(
        splice(&a, &shared, "notes.md", 0, "hello")
            .await
            .is_success()
    );

    // B's stream shows the remote edit of the shared file.
    let remote_edit = |n: &str, v: &serde_json::Value| {
        n == "file_changed"
            && v["workspace"] == shared.as_str()
            && v["path"] == "notes.md"
            && v["origin"] == "remote"
    };
    assert!(
        wait_for(WAIT, || async { has(&b_events, remote_edit) }).await,
        "B saw {:?}",
        b_events.lock().expect("lock")
    );
    // A's stream shows its own edits as local, for both workspaces.
    for ws in [&shared, &private] {
        assert!(
            wait_for(WAIT, || async {
                has(&a_events, |n, v| {
                    n == "file_changed" && v["workspace"] == ws.as_str() && v["origin"] == "local"
                })
            })
            .await
        );
    }
    // The metrics saw it: a propagation latency and the live subscribers.
    assert!(b.metric("xencode_propagation_latency_seconds_count").await >= 1.0);
    assert!(b.metric("xencode_event_subscribers").await >= 2.0);
    assert!(
        a.metric("xencode_audit_entries_total{decision=\"allow\"}")
            .await
            >= 1.0
    );
    // Sessions and applied changes are reported too.
    assert!(has(&b_events, |n, v| n == "applied"
        && v["workspace"] == shared.as_str()));
    // Nothing about the private workspace ever reached B's streams.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for stream in [&b_events, &b_filtered] {
        let all = stream.lock().expect("lock");
        for (name, v) in all.iter() {
            assert!(
                !v.to_string().contains(&private),
                "B's stream carried {name} {v} from a workspace B is not in"
            );
        }
    }
    assert!(
        b_filtered
            .lock()
            .expect("lock")
            .iter()
            .all(|(n, _)| n == "peer")
    );

    // A malformed filter is a clear 400.
    let bad = b
        .http()
        .get(format!("{}/api/v1/events?ws=1", b.api_url))
        .send()
        .await
        .expect("bad");
    assert_eq!(bad.status(), reqwest::StatusCode::BAD_REQUEST);
}
