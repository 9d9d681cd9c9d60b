//! The audit log of real nodes: API and peer-session decisions, allowed and
//! refused, shown to admins only; a changed entry in the redb file breaks the
//! hash chain and `xencode audit` says so.

use std::time::Duration;

use redb::ReadableTable;
use xencode_tests::{Node, invite_and_join, last_line, put, wait_for};

const WAIT: Duration = Duration::from_secs(60);

fn audit_json(node: &Node, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json", "audit", "--limit", "10000"];
    all.extend_from_slice(args);
    let out = node.cli(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("audit JSON")
}

fn entries(log: &serde_json::Value) -> Vec<serde_json::Value> {
    log["entries"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn decisions_are_logged_and_tampering_shows() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::start(&tmp.path().join("a")).expect("a");
    let b = Node::start(&tmp.path().join("b")).expect("b");
    let ws = last_line(&a.cli(&["workspace", "create", "audited"]));
    invite_and_join(&a, &ws, &b, "viewer");
    assert!(
        wait_for(WAIT, || async {
            b.get_json(&format!("/api/v1/workspaces/{ws}")).await["name"] == "audited"
        })
        .await
    );
    // A refused request: a wrong token.
    let wrong = reqwest::Client::new()
        .get(format!("{}/api/v1/workspaces", a.api_url))
        .bearer_auth("not-the-token")
        .send()
        .await
        .expect("request");
    assert_eq!(wrong.status(), reqwest::StatusCode::UNAUTHORIZED);
    // B, a viewer, tries to write: refused by B's own node.
    assert_eq!(
        put(&b, &ws, "x.txt", "no").await,
        reqwest::StatusCode::FORBIDDEN
    );

    // A (admin) sees API and peer decisions, allowed and refused.
    let has = |log: &serde_json::Value, f: &dyn Fn(&serde_json::Value) -> bool| {
        entries(log).iter().any(f)
    };
    let peer_b = format!("peer:{}", b.peer_id);
    assert!(
        wait_for(WAIT, || async {
            let log = audit_json(&a, &[]);
            has(&log, &|e| {
                e["who"] == peer_b.as_str()
                    && e["action"] == "sync.open"
                    && e["decision"] == "allow"
                    && e["workspace"] == ws.as_str()
            })
        })
        .await,
        "A's audit log records B's sync session"
    );
    let log = audit_json(&a, &[]);
    assert_eq!(log["chain"]["intact"], true);
    // The wrong-token request never authenticated: it is tallied with the
    // strangers' refusals (their own table, their own cap), not chained.
    assert!(
        log["refusals"]
            .as_array()
            .is_some_and(|r| r.iter().any(|t| t["reason"] == "unauthorized"
                && t["source"] == "local"
                && t["count"].as_u64() >= Some(1))),
        "{log}"
    );
    assert!(!has(&log, &|e| e["who"] == "unauthenticated"));
    assert!(has(&log, &|e| e["action"]
        == format!("POST /api/v1/workspaces/{ws}/invites").as_str()
        && e["decision"] == "allow"
        && e["who"] == "local:api-token"
        && e["workspace"] == ws.as_str()));
    // A change names the file itself; the owner's own reads are not logged
    // (the test's many GETs above), refusals always are.
    assert_eq!(
        put(&a, &ws, "src/café menu.py", "x = 1\n").await,
        reqwest::StatusCode::OK
    );
    let log = audit_json(&a, &[]);
    assert!(
        has(&log, &|e| e["action"]
            == format!(
                "PUT /api/v1/workspaces/{ws}/files/src/café menu.py"
            )
            .as_str()),
        "{log}"
    );
    assert!(
        !has(&log, &|e| e["who"] == "local:api-token"
            && e["decision"] == "allow"
            && e["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("GET "))),
        "the owner's allowed reads are not logged"
    );
    // A refusal on A: the creator cannot be revoked (403).
    assert!(!a.cli(&["revoke", &ws, &a.peer_id]).status.success());
    let denied = audit_json(&a, &["--denied"]);
    assert!(
        has(&denied, &|e| e["action"]
            == format!("POST /api/v1/workspaces/{ws}/revoke").as_str()),
        "{denied}"
    );
    assert!(entries(&denied).iter().all(|e| e["decision"] == "deny"));
    // Sequence numbers are consecutive.
    let seqs: Vec<u64> = entries(&log)
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // B's refused write is logged on B, but B is no admin of the workspace:
    // its entries are not shown to B, and asking for them is refused.
    let b_log = audit_json(&b, &[]);
    assert!(!has(&b_log, &|e| e["workspace"] == ws.as_str()));
    let refused = b.cli(&["audit", &ws]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("admins"));
    // A's per-workspace view holds only that workspace's entries.
    let only = audit_json(&a, &[&ws]);
    assert!(!entries(&only).is_empty());
    assert!(entries(&only).iter().all(|e| e["workspace"] == ws.as_str()));

    // Tamper with one entry on disk: the chain shows where.
    let dir = a.dir.clone();
    assert!(a.stop().success());
    let db = redb::Database::open(dir.join("xencode.redb")).expect("open the store");
    let table: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit-1");
    let tx = db.begin_write().expect("tx");
    {
        let mut t = tx.open_table(table).expect("audit table");
        let mut bytes = t.get(2).expect("get").expect("entry 2").value().to_vec();
        // Change one character of who asked, keeping the record decodable.
        let pos = [&b"local:"[..], b"peer:", b"unauthenticated"]
            .iter()
            .find_map(|p| {
                bytes
                    .windows(p.len())
                    .position(|w| w == *p)
                    .map(|i| i + p.len() - 1)
            })
            .expect("entry 2 names who asked");
        bytes[pos] = b'X';
        t.insert(2, bytes.as_slice()).expect("insert");
    }
    tx.commit().expect("commit");
    drop(db);
    let a = Node::start(&dir).expect("restart a");
    let out = a.cli(&["audit"]);
    assert!(!out.status.success(), "a broken chain exits non-zero");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("breaks at entry 2"), "{err}");
}
