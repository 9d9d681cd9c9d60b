//! Team sync between real `xencode` nodes over libp2p on loopback: invitations,
//! roles, concurrent writes, revocation, offline catch-up and crashes.

use std::time::Duration;

use xencode_tests::{
    Node, converged, free_port, invite_and_join, last_line, ok_stdout, put, splice, wait_for,
};

const CONVERGE: Duration = Duration::from_secs(60);

struct Team {
    _tmp: tempfile::TempDir,
    a: Node,
    b: Node,
    c: Node,
    ws: String,
}

/// A creates a workspace, invites B as developer and C as viewer; both join.
async fn team() -> Team {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::start(&tmp.path().join("a")).expect("a");
    let b = Node::start(&tmp.path().join("b")).expect("b");
    let c = Node::start(&tmp.path().join("c")).expect("c");
    let ws = last_line(&a.cli(&["workspace", "create", "team"]));
    assert_eq!(ws.len(), 32);
    for (node, role) in [(&b, "developer"), (&c, "viewer")] {
        invite_and_join(&a, &ws, node, role);
    }
    for node in [&b, &c] {
        let synced = wait_for(CONVERGE, || async {
            let d = node.get_json(&format!("/api/v1/workspaces/{ws}")).await;
            d["members"].as_array().is_some_and(|m| m.len() == 3) && d["name"] == "team"
        })
        .await;
        assert!(
            synced,
            "the access document reached {}:\n{}",
            node.peer_id,
            node.log_text()
        );
    }
    Team {
        _tmp: tmp,
        a,
        b,
        c,
        ws,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_converge_on_fifty_concurrent_writes() {
    let t = team().await;
    let ws = t.ws.clone();
    assert_eq!(
        put(&t.a, &ws, "shared.txt", "").await,
        reqwest::StatusCode::OK
    );
    assert!(
        wait_for(CONVERGE, || async {
            t.b.file(&ws, "shared.txt").await.is_some()
        })
        .await
    );
    // 25 writes on A and 25 on B at the same time: new files, and character
    // edits to one shared file.
    let (a, b) = (&t.a, &t.b);
    let writes_a = async {
        for i in 0..25 {
            if i % 2 == 0 {
                assert!(
                    put(a, &ws, &format!("a/{i}.txt"), &format!("from a {i}"))
                        .await
                        .is_success()
                );
            } else {
                assert!(splice(a, &ws, "shared.txt", 0, "A").await.is_success());
            }
        }
    };
    let writes_b = async {
        for i in 0..25 {
            if i % 2 == 0 {
                assert!(
                    put(b, &ws, &format!("b/{i}.txt"), &format!("from b {i}"))
                        .await
                        .is_success()
                );
            } else {
                assert!(splice(b, &ws, "shared.txt", 0, "B").await.is_success());
            }
        }
    };
    tokio::join!(writes_a, writes_b);
    let nodes = [&t.a, &t.b, &t.c];
    if !wait_for(CONVERGE, || converged(&nodes, &ws)).await {
        for (name, n) in [("A", &t.a), ("B", &t.b), ("C", &t.c)] {
            let warnings: Vec<String> = n
                .log_text()
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                .map(str::to_owned)
                .collect();
            eprintln!(
                "{name}: files {:?}\nshared {:?}\npeers {}\nwarnings {:#?}",
                n.files(&ws).await,
                n.file(&ws, "shared.txt").await.map(String::from_utf8),
                n.get_json("/api/v1/peers").await,
                warnings
            );
        }
        panic!("heads differ");
    }
    let files = t.a.files(&ws).await;
    assert_eq!(files.len(), 1 + 13 + 13, "{files:?}");
    for n in &nodes[1..] {
        assert_eq!(n.files(&ws).await, files);
    }
    let shared = t.c.file(&ws, "shared.txt").await.expect("shared");
    let shared = String::from_utf8(shared).expect("utf8");
    assert_eq!(shared.matches('A').count(), 12);
    assert_eq!(
        shared.matches('B').count(),
        12,
        "concurrent character edits merged: {shared}"
    );
    for n in &nodes {
        assert_eq!(
            n.file(&ws, "b/4.txt").await.as_deref(),
            Some(&b"from b 4"[..])
        );
    }

    // Gossip: B's announcement of its new heads reaches C (through A's mesh
    // or directly); it carries a digest, never content.
    assert!(put(&t.b, &ws, "announce.txt", "x").await.is_success());
    let heard = wait_for(CONVERGE, || async {
        t.c.metric(r#"xencode_gossip_messages_total{direction="in",outcome="accepted"}"#)
            .await
            > 0.0
    })
    .await;
    assert!(heard, "C heard no announcement:\n{}", t.c.log_text());
    let published = wait_for(CONVERGE, || async {
        t.b.metric(r#"xencode_gossip_messages_total{direction="out",outcome="published"}"#)
            .await
            > 0.0
    })
    .await;
    assert!(published, "{}", t.b.get_text("/metrics").await);
    assert!(wait_for(CONVERGE, || converged(&nodes, &ws)).await);

    // The viewer's write is refused locally and reaches nobody.
    let status = put(&t.c, &ws, "viewer.txt", "nope").await;
    assert_eq!(status, reqwest::StatusCode::FORBIDDEN);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(t.a.file(&ws, "viewer.txt").await.is_none());

    // `peers` shows the others connected and caught up.
    let peers = t.a.get_json("/api/v1/peers").await;
    let list = peers["peers"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        list.iter().filter(|p| p["connected"] == true).count(),
        2,
        "{peers}"
    );
    let caught_up = wait_for(CONVERGE, || async {
        let peers = t.a.get_json("/api/v1/peers").await;
        peers["peers"].as_array().is_some_and(|l| {
            l.iter().all(|p| {
                p["workspaces"]
                    .as_array()
                    .is_some_and(|w| w.iter().all(|x| x["behind"] == 0))
            })
        })
    })
    .await;
    assert!(caught_up, "{}", t.a.get_json("/api/v1/peers").await);
    let text = ok_stdout(&t.a.cli(&["peers"]));
    assert!(
        text.contains(&t.b.peer_id) && text.contains("up to date"),
        "{text}"
    );

    // C goes offline; A changes a file twice. A still says how far behind
    // C is, from where C's last session ended, and says that it is that.
    let c_id = t.c.peer_id.clone();
    t.c.stop();
    for body in ["offline 1", "offline 2"] {
        assert!(put(&t.a, &ws, "announce.txt", body).await.is_success());
    }
    let c_lag = |peers: &serde_json::Value| {
        peers["peers"]
            .as_array()
            .and_then(|l| l.iter().find(|p| p["peer_id"] == c_id.as_str()))
            .map(|p| (p["connected"].clone(), p["workspaces"][0].clone()))
    };
    let offline = wait_for(CONVERGE, || async {
        let peers = t.a.get_json("/api/v1/peers").await;
        c_lag(&peers).is_some_and(|(connected, w)| {
            connected == false && w["lag"] == "last_known" && w["behind"].as_u64() >= Some(2)
        })
    })
    .await;
    assert!(offline, "{}", t.a.get_json("/api/v1/peers").await);
    let text = ok_stdout(&t.a.cli(&["peers"]));
    let line = text.lines().find(|l| l.contains(&c_id)).unwrap_or_default();
    assert!(
        line.contains("offline") && line.contains("behind as of its last session"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_learn_nothing_and_stolen_tokens_are_useless() {
    let t = team().await;
    assert_eq!(
        put(&t.a, &t.ws, "secret.txt", "classified").await,
        reqwest::StatusCode::OK
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let d = Node::start_with(&tmp.path().join("d"), free_port(), &[t.a.addr()]).expect("d");
    // D connects to A but holds no token: it gets nothing.
    assert!(
        wait_for(CONVERGE, || async {
            let peers = t.a.get_json("/api/v1/peers").await;
            peers["peers"]
                .as_array()
                .is_some_and(|l| l.iter().any(|p| p["peer_id"] == d.peer_id.as_str()))
        })
        .await,
        "D never connected to A: {}\nD's log:\n{}",
        t.a.get_json("/api/v1/peers").await,
        d.log_text()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let list = d.get_json("/api/v1/workspaces").await;
    assert_eq!(list["workspaces"].as_array().map(Vec::len), Some(0));
    // An invitation made for B does not let D in.
    let for_b = last_line(&t.a.cli(&["invite", &t.ws, &t.b.peer_id, "--role", "developer"]));
    let out = d.cli(&["join", &for_b]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("belongs to"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.file(&t.ws, "secret.txt").await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_developer_is_refused_by_everyone() {
    let t = team().await;
    let ws = t.ws.clone();
    let b_dir = t.b.dir.clone();
    let b_port = t.b.p2p_port;
    let b_id = t.b.peer_id.clone();
    // B goes offline; A revokes B while B cannot hear it.
    t.b.stop();
    ok_stdout(&t.a.cli(&["revoke", &ws, &b_id]));
    assert!(
        wait_for(CONVERGE, || async {
            let d = t.c.get_json(&format!("/api/v1/workspaces/{ws}")).await;
            d["members"].as_array().is_some_and(|m| {
                m.iter()
                    .any(|x| x["peer_id"] == b_id.as_str() && x["revoked"] == true)
            })
        })
        .await,
        "the revocation reached C"
    );
    // B comes back still believing it is a developer and writes.
    let b = Node::start_with(&b_dir, b_port, &[t.a.addr()]).expect("b restarts");
    assert_eq!(
        put(&b, &ws, "after-revocation.txt", "should not spread").await,
        reqwest::StatusCode::OK
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        t.a.file(&ws, "after-revocation.txt").await.is_none(),
        "A refused B's later write"
    );
    assert!(
        t.c.file(&ws, "after-revocation.txt").await.is_none(),
        "C refused B's later write"
    );
    let log = t.a.log_text();
    assert!(
        log.contains("revoked") || log.contains("refused"),
        "A logged the refusal:\n{log}"
    );

    // C is revoked while connected: A closes C's session within 5 s, and
    // what A writes afterwards does not reach C.
    ok_stdout(&t.a.cli(&["revoke", &ws, &t.c.peer_id]));
    let closed = wait_for(Duration::from_secs(5), || async {
        let peers = t.a.get_json("/api/v1/peers").await;
        peers["peers"].as_array().is_some_and(|l| {
            l.iter().any(|p| {
                p["peer_id"] == t.c.peer_id.as_str()
                    && p["workspaces"]
                        .as_array()
                        .is_some_and(|w| w.iter().all(|x| x["syncing"] == false))
            })
        })
    })
    .await;
    assert!(
        closed,
        "A still syncs with revoked C: {}",
        t.a.get_json("/api/v1/peers").await
    );
    assert_eq!(
        put(&t.a, &ws, "after-c.txt", "not for C").await,
        reqwest::StatusCode::OK
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        t.c.file(&ws, "after-c.txt").await.is_none(),
        "C got a write made after its revocation"
    );

    // C itself learns why: the revocation reached it ahead of the refusal,
    // so it says "revoked" rather than "developer" (or a guess).
    let told = wait_for(Duration::from_secs(10), || async {
        let d = t.c.get_json(&format!("/api/v1/workspaces/{ws}")).await;
        d["standing"] == "revoked" && d["effective_role"].is_null()
    })
    .await;
    assert!(
        told,
        "C does not know it was revoked: {}",
        t.c.get_json(&format!("/api/v1/workspaces/{ws}")).await
    );
    let own = ok_stdout(&t.c.cli(&["workspace", "show", &ws]));
    assert!(own.contains("your role: none (revoked"), "{own}");

    // A lists C as revoked in words too, as its JSON does.
    let shown = ok_stdout(&t.a.cli(&["workspace", "show", &ws]));
    assert!(
        shown.contains(&format!("{}  viewer (revoked)", t.c.peer_id)),
        "{shown}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_offline_during_a_thousand_edits_catches_up() {
    let t = team().await;
    let ws = t.ws.clone();
    assert_eq!(put(&t.a, &ws, "log.txt", "").await, reqwest::StatusCode::OK);
    assert!(
        wait_for(CONVERGE, || async {
            t.b.file(&ws, "log.txt").await.is_some()
        })
        .await
    );
    let (b_dir, b_port) = (t.b.dir.clone(), t.b.p2p_port);
    t.b.stop();
    for i in 0..1000u64 {
        let ch = char::from(b'a' + (i % 26) as u8).to_string();
        assert!(splice(&t.a, &ws, "log.txt", i, &ch).await.is_success());
    }
    let b = Node::start_with(&b_dir, b_port, &[t.a.addr()]).expect("b restarts");
    let want = t.a.file(&ws, "log.txt").await.expect("a has it");
    assert_eq!(want.len(), 1000);
    assert!(
        wait_for(CONVERGE, || async {
            b.file(&ws, "log.txt").await.as_deref() == Some(&want[..])
        })
        .await,
        "B caught up with the 1000 edits it missed"
    );
    // They came as one checked document chunk, which B keeps as the
    // file's stored form: it survives a restart and takes new edits.
    assert!(
        b.metric("xencode_sync_chunks_applied_total").await >= 1.0,
        "the missed history came as a chunk"
    );
    b.stop();
    let b = Node::start_with(&b_dir, b_port, &[t.a.addr()]).expect("b restarts again");
    assert_eq!(b.file(&ws, "log.txt").await.as_deref(), Some(&want[..]));
    assert!(splice(&b, &ws, "log.txt", 0, "!").await.is_success());
    assert!(
        wait_for(CONVERGE, || async {
            t.a.file(&ws, "log.txt")
                .await
                .is_some_and(|f| f.starts_with(b"!"))
        })
        .await,
        "B's edit on top of the chunk reaches A"
    );
    let nodes = [&t.a, &b, &t.c];
    assert!(wait_for(CONVERGE, || converged(&nodes, &ws)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_during_edits_loses_nothing_it_acknowledged() {
    let t = team().await;
    let ws = t.ws.clone();
    assert_eq!(
        put(&t.b, &ws, "journal.txt", "").await,
        reqwest::StatusCode::OK
    );
    let (b_dir, b_port) = (t.b.dir.clone(), t.b.p2p_port);
    // A writer keeps splicing into B, one acknowledged edit after another,
    // until B stops answering; B is killed in the middle of it.
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writer = {
        let (http, url, ws, acked) = (
            t.b.http(),
            t.b.api_url.clone(),
            ws.clone(),
            acknowledged.clone(),
        );
        tokio::spawn(async move {
            for i in 0..5_000u64 {
                let ok = http
                    .post(format!("{url}/api/v1/workspaces/{ws}/splice"))
                    .json(&serde_json::json!({"path": "journal.txt", "pos": i, "insert": "x"}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if !ok {
                    break;
                }
                acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    let started = std::time::Instant::now();
    while acknowledged.load(std::sync::atomic::Ordering::SeqCst) < 100 {
        assert!(started.elapsed() < CONVERGE, "the writer never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.b.kill9();
    writer.await.expect("writer");
    let acked = acknowledged.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (100..5_000).contains(&acked),
        "B was killed mid-stream ({acked} acknowledged)"
    );
    let b = Node::start_with(&b_dir, b_port, &[t.a.addr()]).expect("b restarts after kill -9");
    let text = b.file(&ws, "journal.txt").await.expect("journal");
    // Every acknowledged splice survived; at most the one in flight when B
    // died may have been committed without its answer getting out.
    let len = text.len() as u64;
    assert!(
        len == acked || len == acked + 1,
        "B has {len} characters after {acked} acknowledged splices"
    );
    let nodes = [&t.a, &b, &t.c];
    assert!(
        wait_for(CONVERGE, || converged(&nodes, &ws)).await,
        "converged after the crash"
    );
    assert_eq!(t.a.file(&ws, "journal.txt").await, Some(text));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_analysis_run_on_one_node_reaches_its_teammates() {
    let t = team().await;
    let ws = t.ws.clone();
    let src = "import pickle\n\n\ndef load(blob):\n    return pickle.loads(blob)\n";
    assert_eq!(
        put(&t.a, &ws, "app/load.py", src).await,
        reqwest::StatusCode::OK
    );
    let out = t.a.cli(&["--json", "analyze", &ws, "app/load.py"]);
    let record: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(record["security_issues"][0]["cwe_id"], "CWE-502");
    assert_eq!(record["security_issues"][0]["line"], 5);
    assert_eq!(record["stored"], true);
    assert_eq!(record["by"], t.a.peer_id.as_str());
    // B gets A's analysis by sync, provenance and all, without running it.
    let reached = wait_for(CONVERGE, || async {
        let list =
            t.b.get_json(&format!("/api/v1/workspaces/{ws}/analyses"))
                .await;
        list["analyses"][0]["content_hash"] == record["content_hash"]
            && list["analyses"][0]["by"] == record["by"]
    })
    .await;
    assert!(
        reached,
        "{}",
        t.b.get_json(&format!("/api/v1/workspaces/{ws}/analyses"))
            .await
    );
    // The text form names the finding and its CWE.
    let text = ok_stdout(&t.b.cli(&["analyze", &ws, "app/load.py"]));
    assert!(
        text.contains("app/load.py:5:") && text.contains("CWE-502"),
        "{text}"
    );
    // A viewer can analyse for itself but not write into the workspace.
    let out = t.c.cli(&["--json", "analyze", &ws, "app/load.py"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let viewer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(viewer["stored"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_stopped_in_step_resumes_without_resyncing_every_document() {
    let t = team().await;
    let ws = t.ws.clone();
    const FILES: usize = 30;
    for i in 0..FILES {
        let path = format!("f{i}.txt");
        assert_eq!(put(&t.a, &ws, &path, "x").await, reqwest::StatusCode::OK);
    }
    let nodes = [&t.a, &t.b, &t.c];
    assert!(wait_for(CONVERGE, || converged(&nodes, &ws)).await);
    // B received every file from A. Settled, C gone: nothing in flight when
    // B stops in an orderly way.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = t.c.stop();
    let (b_dir, b_port) = (t.b.dir.clone(), t.b.p2p_port);
    let status = t.b.stop();
    assert!(status.success(), "B stopped cleanly: {status}");
    let b = Node::start_with(&b_dir, b_port, &[t.a.addr()]).expect("b restarts");
    // The session with A opens again...
    assert!(
        wait_for(CONVERGE, || async {
            let peers = b.get_json("/api/v1/peers").await;
            let list = peers["peers"].as_array().cloned().unwrap_or_default();
            let syncing = list
                .iter()
                .filter(|p| {
                    p["workspaces"]
                        .as_array()
                        .is_some_and(|w| w.iter().any(|x| x["syncing"] == true))
                })
                .count();
            syncing >= 1
        })
        .await,
        "B's sessions reopened:\n{}",
        b.log_text()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    // ...and costs no sync message for the documents still in step: B
    // kept the session's sync states when it stopped, and counts what it
    // received from A as shared with A. (Without either, B sends one
    // message per document: 32 here.)
    let sent = b
        .metric("xencode_sync_messages_total{direction=\"out\"}")
        .await;
    assert!(
        sent < (FILES as f64) / 2.0,
        "B sent {sent} frames on reconnecting in step:\n{}",
        b.log_text()
    );
    assert!(put(&t.a, &ws, "after.txt", "y").await == reqwest::StatusCode::OK);
    let nodes = [&t.a, &b];
    assert!(wait_for(CONVERGE, || converged(&nodes, &ws)).await);
}
