//! What the node acknowledged survives kill -9; bad stores stop it cleanly.

use serde_json::json;
use xencode_tests::{Node, cli, last_line, ok_stdout, put, uncompacted_modules};

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_splices_survive_kill_9_and_restart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let node = Node::start(&home).expect("node starts");
    let ws = last_line(&cli(&home, &["workspace", "create", "durable"]));
    let http = node.http();
    let files = format!("{}/api/v1/workspaces/{ws}/files/notes.txt", node.api_url);
    let put = http.put(files).body("").send().await.expect("put");
    assert!(put.status().is_success());

    // 200 single-character splices, each acknowledged before the next.
    let splice = format!("{}/api/v1/workspaces/{ws}/splice", node.api_url);
    let mut expected = String::new();
    for i in 0..200u32 {
        let ch = char::from(b'a' + (i % 26) as u8);
        let pos = if i % 3 == 0 {
            0
        } else {
            expected.chars().count()
        };
        let resp = http
            .post(&splice)
            .json(&json!({"path": "notes.txt", "pos": pos, "insert": ch.to_string()}))
            .send()
            .await
            .expect("splice");
        assert!(resp.status().is_success(), "splice {i}: {}", resp.status());
        expected.insert(
            expected
                .char_indices()
                .nth(pos)
                .map_or(expected.len(), |(b, _)| b),
            ch,
        );
    }
    let show = format!("{}/api/v1/workspaces/{ws}", node.api_url);
    let heads_before: serde_json::Value = http
        .get(&show)
        .send()
        .await
        .expect("show")
        .json()
        .await
        .expect("json");
    node.kill9();

    let node = Node::start(&home).expect("node restarts after kill -9");
    let after = ok_stdout(&cli(&home, &["file", "get", &ws, "notes.txt"]));
    assert_eq!(
        after.chars().count(),
        200,
        "every acknowledged splice is there"
    );
    assert_eq!(after, expected);
    // The restarted node listens on a new port.
    let show = format!("{}/api/v1/workspaces/{ws}", node.api_url);
    let splice = format!("{}/api/v1/workspaces/{ws}/splice", node.api_url);
    let heads_after: serde_json::Value = node
        .http()
        .get(&show)
        .send()
        .await
        .expect("show")
        .json()
        .await
        .expect("json");
    assert_eq!(heads_after["heads"], heads_before["heads"]);
    // And the node keeps working after the crash.
    let resp = node
        .http()
        .post(&splice)
        .json(&json!({"path": "notes.txt", "pos": 0, "insert": "!"}))
        .send()
        .await
        .expect("splice");
    assert!(resp.status().is_success());
}

#[test]
fn a_corrupt_store_stops_the_node_with_a_clear_error_and_is_left_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    ok_stdout(&cli(&home, &["init"]));
    let garbage = b"this is not a database, but it is somebody's data".repeat(100);
    std::fs::write(home.join("xencode.redb"), &garbage).expect("write");
    let out = cli(&home, &["node", "--api", "127.0.0.1:0", "--no-mdns"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a xencode store"), "{err}");
    assert!(err.contains("left untouched"), "{err}");
    assert_eq!(
        std::fs::read(home.join("xencode.redb")).expect("read"),
        garbage
    );
    assert!(!home.join("api-url").exists());
}

#[test]
fn a_second_node_on_the_same_data_dir_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    let first = Node::start(&home).expect("first node");
    let url_before = std::fs::read_to_string(home.join("api-url")).expect("api-url");
    let out = cli(&home, &["node", "--api", "127.0.0.1:0", "--no-mdns"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another xencode node"), "{err}");
    assert_eq!(
        std::fs::read_to_string(home.join("api-url")).expect("api-url"),
        url_before
    );
    drop(first);
}

/// Issue 17 (4): a store whose documents are still many small change
/// records — as after a burst of work the node had no time to compact —
/// starts in at most twice the memory the same store needs compacted (peak
/// RSS from /proc; Automerge's patch log once made it 37 times).
#[tokio::test(flavor = "multi_thread")]
async fn a_store_of_uncompacted_records_starts_in_at_most_twice_its_compacted_memory() {
    const FILES: usize = 734;
    const EDITED: usize = 10;
    const SPLICES: usize = 10;
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let config = |after: u64| {
        std::fs::write(
            home.join("config.toml"),
            format!("[store]\ncompact_after_changes = {after}\ncompact_interval_secs = 86400\n"),
        )
        .expect("config")
    };
    // Imported records stay records: a threshold no burst here reaches.
    config(1_000_000);
    let node = Node::start(&home).expect("node starts");
    // 734 modules of 60 lines, imported as a folder: one record each.
    let ws = uncompacted_modules(&node, tmp.path(), FILES, EDITED, SPLICES)
        .await
        .expect("the workspace is written");
    let edited = node.file(&ws, "src/module_0000.py").await.expect("file");
    assert_eq!(node.files(&ws).await.len(), FILES);
    node.stop();

    // Started from change records: one or more per document.
    let node = Node::start(&home).expect("node restarts from change records");
    assert_eq!(node.files(&ws).await.len(), FILES);
    assert_eq!(
        node.file(&ws, "src/module_0000.py").await,
        Some(edited.clone())
    );
    let (from_records, _) = node.memory_kib();
    node.stop();

    // Compacted: the next write folds every document into a snapshot, and
    // the store finishes it before an orderly exit.
    config(1);
    let node = Node::start(&home).expect("node starts to compact");
    assert!(put(&node, &ws, "compact-now.txt", "x").await.is_success());
    node.stop();
    config(1_000_000);
    let node = Node::start(&home).expect("node restarts from snapshots");
    assert_eq!(node.file(&ws, "src/module_0000.py").await, Some(edited));
    let (from_snapshots, _) = node.memory_kib();
    node.stop();

    println!(
        "peak RSS at start: {from_records} KiB from change records, {from_snapshots} KiB from snapshots"
    );
    assert!(
        from_records > 0 && from_snapshots > 0,
        "/proc gave no peak RSS"
    );
    assert!(
        from_records <= 2 * from_snapshots,
        "starting from change records took {from_records} KiB, more than twice the {from_snapshots} KiB from snapshots"
    );
}
