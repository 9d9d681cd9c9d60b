//! A workspace's whole life cycle through the CLI of real nodes: unique
//! names (without regard to case, with "did you mean"), rename for every
//! member, `leave` by a member and `rm` by the creator — each leaving no
//! record of the workspace in the store file.

use std::time::Duration;

use xencode_tests::{Node, Pair, error_code, json_of as json, last_line, ok_stdout, wait_for};

/// Bytes that cannot compress: they appear verbatim in the store file as
/// long as the workspace's history is in it.
fn incompressible(len: usize) -> Vec<u8> {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
        | 1;
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 24) as u8
        })
        .collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What of workspace `ws` (its raw id, its id as text, a window of the
/// incompressible file) the node's store file still holds.
fn traces_in_store(node: &Node, ws: &str, marker: &[u8]) -> Vec<&'static str> {
    let bytes = std::fs::read(node.dir.join("xencode.redb")).expect("read the store file");
    let id: xencode_protocol::WorkspaceId = ws.parse().expect("workspace id");
    let mut found = Vec::new();
    if contains(&bytes, id.as_bytes()) {
        found.push("raw id");
    }
    if contains(&bytes, ws.as_bytes()) {
        found.push("id text");
    }
    if contains(&bytes, marker) {
        found.push("file content");
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workspace_is_named_renamed_left_and_removed_without_a_trace() {
    let pair = Pair::sharing(&[("src/app.py", "print('hello')\n")]).await;
    let (a, b, ws) = (&pair.a, &pair.b, pair.ws.as_str());

    // Content that would show in the store file if any history stayed.
    let blob = incompressible(8192);
    let marker = &blob[4096..4160];
    let blob_file = pair.tmp.path().join("blob.bin");
    std::fs::write(&blob_file, &blob).expect("write blob");
    ok_stdout(&a.cli(&[
        "file",
        "put",
        ws,
        "assets/blob.bin",
        blob_file.to_str().expect("utf8"),
    ]));
    let arrived = wait_for(Duration::from_secs(60), || async {
        b.file(ws, "assets/blob.bin").await.as_deref() == Some(&blob[..])
    })
    .await;
    assert!(arrived, "the blob never reached B\n{}", pair.logs());

    // Names: unique on a node without regard to case; --exist-ok reuses.
    assert_eq!(
        error_code(&a.cli(&["workspace", "create", "PAIR", "--json"])),
        "name_taken"
    );
    let again = a.cli(&["workspace", "create", "Pair", "--exist-ok"]);
    assert_eq!(last_line(&again), ws, "--exist-ok prints the existing id");
    let shown = json(&a.cli(&["workspace", "show", "PaIr", "--json"]));
    assert_eq!(shown["id"], ws, "a name matches without regard to case");
    let typo = a.cli(&["workspace", "show", "piar"]);
    assert!(!typo.status.success());
    let err = String::from_utf8_lossy(&typo.stderr);
    assert!(err.contains("did you mean \"pair\""), "{err}");

    // Rename: an admin's change every member sees; a taken name is refused.
    let other = last_line(&a.cli(&["workspace", "create", "Other"]));
    assert_eq!(
        error_code(&a.cli(&["workspace", "rename", ws, "other", "--json"])),
        "name_taken"
    );
    ok_stdout(&a.cli(&["workspace", "rename", "pair", "Handbook"]));
    let renamed = wait_for(Duration::from_secs(30), || async {
        json(&b.cli(&["workspace", "show", ws, "--json"]))["name"] == "Handbook"
    })
    .await;
    assert!(renamed, "B never saw the new name\n{}", pair.logs());
    assert_eq!(
        error_code(&b.cli(&["workspace", "rename", ws, "Mine", "--json"])),
        "forbidden",
        "a developer cannot rename"
    );

    // B leaves. Each command refuses the other's case; no terminal, no --yes:
    // refused.
    assert_eq!(
        error_code(&b.cli(&["workspace", "rm", "handbook", "--json"])),
        "not_owner"
    );
    assert_eq!(
        error_code(&b.cli(&["workspace", "leave", "handbook", "--json"])),
        "confirmation_needed"
    );
    assert_eq!(
        traces_in_store(b, ws, marker),
        ["raw id", "id text", "file content"],
        "before leaving, B's store holds the workspace (else this test proves nothing)"
    );
    let left = json(&b.cli(&["workspace", "leave", "handbook", "--yes", "--json"]));
    assert!(left["documents"].as_u64().is_some_and(|n| n >= 4), "{left}");
    assert_eq!(left["folders_unlinked"], 1, "{left}");
    assert_eq!(left["compacted"], true, "{left}");
    assert_eq!(left["was_owner"], false);
    assert!(
        traces_in_store(b, ws, marker).is_empty(),
        "{:?}",
        traces_in_store(b, ws, marker)
    );
    let list = json(&b.cli(&["workspace", "list", "--json"]));
    assert_eq!(
        list["workspaces"].as_array().map(Vec::len),
        Some(0),
        "{list}"
    );
    assert_eq!(
        json(&b.cli(&["folder", "list", "--json"]))["folders"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(
        std::fs::read_to_string(pair.fb.join("src/app.py")).expect("B's files stay"),
        "print('hello')\n"
    );
    let audit = json(&b.cli(&["audit", "--json", "--limit", "1000"]));
    assert_eq!(audit["chain"]["intact"], true, "{}", audit["chain"]);
    assert!(
        !audit.to_string().contains(ws),
        "the audit log forgot the id too"
    );

    // A's copy lives on; its edits no longer reach B's folder.
    std::fs::write(pair.fa.join("src/app.py"), "print('after')\n").expect("edit");
    let synced_locally = wait_for(Duration::from_secs(30), || async {
        a.file(ws, "src/app.py").await.as_deref() == Some(b"print('after')\n".as_slice())
    })
    .await;
    assert!(
        synced_locally,
        "A's folder edit never reached A's workspace"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        std::fs::read_to_string(pair.fb.join("src/app.py")).expect("read"),
        "print('hello')\n",
        "a left workspace no longer writes to the unlinked folder"
    );

    // A, the creator, removes it.
    assert_eq!(
        error_code(&a.cli(&["workspace", "leave", ws, "--json"])),
        "is_owner"
    );
    let removed = json(&a.cli(&["workspace", "rm", "handbook", "--yes", "--json"]));
    assert_eq!(removed["was_owner"], true, "{removed}");
    assert_eq!(removed["compacted"], true, "{removed}");
    assert!(
        traces_in_store(a, ws, marker).is_empty(),
        "{:?}",
        traces_in_store(a, ws, marker)
    );
    assert_eq!(
        std::fs::read_to_string(pair.fa.join("src/app.py")).expect("A's files stay"),
        "print('after')\n"
    );
    let remaining = json(&a.cli(&["workspace", "list", "--json"]));
    assert_eq!(
        remaining["workspaces"][0]["id"],
        other.as_str(),
        "{remaining}"
    );
    assert_eq!(remaining["workspaces"].as_array().map(Vec::len), Some(1));

    // Forgotten for good: not back after a restart.
    let Pair { tmp, a, b, .. } = pair;
    b.stop();
    let dir = a.dir.clone();
    a.stop();
    let a = Node::start(&dir).expect("A restarts");
    let list = json(&a.cli(&["workspace", "list", "--json"]));
    assert_eq!(
        list["workspaces"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    let audit = json(&a.cli(&["audit", "--json", "--limit", "1000"]));
    assert_eq!(audit["chain"]["intact"], true, "{}", audit["chain"]);
    drop(tmp);
}

/// Names for people and nodes: `init --name` puts it in `config.toml`, the
/// node writes it into its own member entry (a viewer too: the write rule
/// lets any member name itself, and only itself), and teammates see it in
/// `workspace show`, `peers` and the audit log; a reload renames.
#[tokio::test(flavor = "multi_thread")]
async fn members_are_shown_by_the_names_they_gave_themselves() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ha, hb) = (tmp.path().join("a"), tmp.path().join("b"));
    ok_stdout(&xencode_tests::cli(&ha, &["init", "--name", "Ada"]));
    ok_stdout(&xencode_tests::cli(
        &hb,
        &["init", "--name", "Bob (laptop)"],
    ));
    let bad = xencode_tests::cli(&hb, &["init", "--name", "x\u{7}"]);
    assert!(!bad.status.success(), "a control character is refused");
    let a = Node::start(&ha).expect("a");
    let b = Node::start(&hb).expect("b");
    let ws = last_line(&a.cli(&["workspace", "create", "named"]));
    xencode_tests::invite_and_join(&a, &ws, &b, "viewer");
    let name_on = |node: &Node, peer: &str| {
        let d = json(&node.cli(&["workspace", "show", &ws, "--json"]));
        d["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["peer_id"] == peer).cloned())
            .map(|m| m["name"].clone())
            .unwrap_or_default()
    };
    let seen = wait_for(Duration::from_secs(60), || async {
        name_on(&a, &b.peer_id) == "Bob (laptop)" && name_on(&b, &a.peer_id) == "Ada"
    })
    .await;
    assert!(
        seen,
        "names did not travel: A sees {}, B sees {}",
        name_on(&a, &b.peer_id),
        name_on(&b, &a.peer_id)
    );
    let shown = ok_stdout(&a.cli(&["workspace", "show", &ws]));
    assert!(
        shown.contains(&format!("{}  viewer  Bob (laptop)", b.peer_id)),
        "{shown}"
    );
    let peers = ok_stdout(&a.cli(&["peers"]));
    assert!(peers.contains("name: Bob (laptop)"), "{peers}");
    let audit = ok_stdout(&a.cli(&["audit"]));
    assert!(audit.contains("(Bob (laptop))"), "{audit}");

    // B renames itself by editing config.toml and reloading.
    let config = hb.join("config.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("Bob (laptop)", "Bob")).expect("write");
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &b.pid().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let renamed = wait_for(Duration::from_secs(60), || async {
        name_on(&a, &b.peer_id) == "Bob"
    })
    .await;
    assert!(renamed, "A still sees {}", name_on(&a, &b.peer_id));
}
