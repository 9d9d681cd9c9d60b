//! Issue 12's attacks on real nodes over loopback: members (viewer,
//! developer, revoked, expired, delegated admin) who write through the
//! Automerge sync message, around the write rule, or at the workspace's
//! root. Each attack must leave every honest node's documents unchanged,
//! count the attempt, and let the honest team go on syncing.

use std::time::Duration;

use automerge::ReadDoc;
use automerge::transaction::Transactable;
use libp2p::PeerId;
use xencode_protocol::WorkspaceId;
use xencode_protocol::invite::Invitation;
use xencode_protocol::wire::Frame;
use xencode_tests::member::{Member, access_doc, index_doc, revoke_in, set_role};
use xencode_tests::{Node, heads_of, invite_and_join, last_line, put, wait_for};

const CONVERGE: Duration = Duration::from_secs(60);

/// A (owner) and B (developer), synced, with one file.
async fn team(dir: &std::path::Path) -> (Node, Node, String) {
    let a = Node::start(&dir.join("a")).expect("a");
    let b = Node::start_with(&dir.join("b"), xencode_tests::free_port(), &[a.addr()]).expect("b");
    let ws = last_line(&a.cli(&["workspace", "create", "attacked"]));
    assert_eq!(
        put(&a, &ws, "notes.txt", "honest").await,
        reqwest::StatusCode::OK
    );
    invite_and_join(&a, &ws, &b, "developer");
    assert!(
        wait_for(CONVERGE, || async {
            b.file(&ws, "notes.txt").await.is_some()
        })
        .await,
        "B synced:\n{}",
        b.log_text()
    );
    (a, b, ws)
}

/// Every document's heads on a node (from the workspace detail), to tell
/// that nothing at all was applied.
async fn all_heads(node: &Node, ws: &str) -> Vec<String> {
    let mut h = heads_of(&node.get_json(&format!("/api/v1/workspaces/{ws}")).await);
    h.sort();
    h
}

/// Nothing reached A's or B's documents since `before`, the file is as A
/// wrote it, and a new write on A still reaches B.
async fn untouched_and_syncing(
    a: &Node,
    b: &Node,
    ws: &str,
    before: &(Vec<String>, Vec<String>),
    tag: &str,
) {
    assert_eq!(all_heads(a, ws).await, before.0, "nothing applied on A");
    assert_eq!(all_heads(b, ws).await, before.1, "nothing reached B");
    assert_eq!(
        a.file(ws, "notes.txt").await.as_deref(),
        Some(&b"honest"[..])
    );
    let name = format!("after-{tag}.txt");
    assert_eq!(put(a, ws, &name, "a").await, reqwest::StatusCode::OK);
    assert!(
        wait_for(CONVERGE, || async { b.file(ws, &name).await.is_some() }).await,
        "A and B kept syncing:\nA:\n{}\nB:\n{}",
        a.log_text(),
        b.log_text()
    );
}

/// A raw member invited by `a` with `role`, its session open and its copies
/// of the access, index and file documents synced.
async fn hostile_member(a: &Node, ws: &str, secret: [u8; 32], role: &str) -> (Member, Vec<u8>) {
    let ws_id: WorkspaceId = ws.parse().expect("ws");
    let a_id: PeerId = a.peer_id.parse().expect("peer");
    let mut m = Member::new(secret, ws_id, a_id).expect("member");
    let invite = last_line(&a.cli(&["invite", ws, &m.raw.peer_id().to_string(), "--role", role]));
    let token = Invitation::decode(&invite).expect("invitation").token;
    m.raw.connect(&a.addr(), &a_id).await.expect("connect");
    m.open(token.clone());
    let me = m.raw.peer_id().to_string();
    for _ in 0..100 {
        m.sync_for(Duration::from_millis(300)).await;
        if m.has_member_entry(&me) && m.docs.len() >= 3 {
            break;
        }
    }
    assert!(
        m.others.iter().any(|f| matches!(f, Frame::Accept { .. })),
        "A admitted the {role}: {:?}",
        m.others
    );
    assert!(
        m.has_member_entry(&me) && m.docs.len() >= 3,
        "the {role} holds the documents"
    );
    (m, token)
}

/// The member's change making itself an admin in the access document.
fn promote_self(m: &mut Member) -> (automerge::Change, xencode_protocol::envelope::SignedHead) {
    let me = m.raw.peer_id().to_string();
    m.change(access_doc(&m.ws), None, |am| set_role(am, &me, "admin"))
}

/// The member's change to the text of the first file document it holds
/// (neither the access nor the index document), citing the access heads.
fn edit_file(m: &mut Member) -> (automerge::Change, xencode_protocol::envelope::SignedHead) {
    let (access, index) = (access_doc(&m.ws), index_doc(&m.ws));
    let file = *m
        .docs
        .keys()
        .find(|d| **d != access && **d != index)
        .expect("a file document");
    let cites = m.access_heads();
    m.change(file, Some(cites), |am| {
        let text = match am.get(automerge::ROOT, "text") {
            Ok(Some((_, t))) => t,
            other => panic!("no text in the file document: {other:?}"),
        };
        am.splice_text(&text, 0, 0, "INJECTED ").expect("splice");
    })
}

async fn rejected(node: &Node, reason: &str) -> f64 {
    node.metric(&format!(
        r#"xencode_changes_rejected_total{{reason="{reason}"}}"#
    ))
    .await
}

/// issue 12, finding 1: a viewer and a developer put their own signed
/// changes — to the access document (promoting themselves) and to a file —
/// inside the Automerge sync message, in the frame beside it, and both at
/// once as a catch-up batch. Nothing is applied on A or B, the sender is
/// struck and cut off, and A and B keep syncing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_cannot_write_through_the_sync_message() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b, ws) = team(tmp.path()).await;
    for (n, role) in [(61u8, "viewer"), (62, "developer")] {
        let (mut m, token) = hostile_member(&a, &ws, [n; 32], role).await;
        let (a_before, b_before) = (all_heads(&a, &ws).await, all_heads(&b, &ws).await);
        let in_message_before = rejected(&a, "changes_in_sync_message").await;
        let (promote, promote_sig) = promote_self(&mut m);
        let (edit, edit_sig) = edit_file(&mut m);
        let access = access_doc(&m.ws);
        let file = *m
            .docs
            .keys()
            .find(|d| **d != access && **d != index_doc(&m.ws))
            .expect("file");
        // 1. Inside the sync message only (signatures beside it).
        let msg = m.message_carrying(access, &[&promote]);
        m.send_sync(access, Some(msg), Vec::new(), vec![promote_sig.clone()]);
        let msg = m.message_carrying(file, &[&edit]);
        m.send_sync(file, Some(msg), Vec::new(), vec![edit_sig.clone()]);
        m.raw.pump(Duration::from_millis(500)).await;
        // 2. Catch-up: a frame with the changes beside the message and in it.
        let msg = m.message_carrying(access, &[&promote]);
        m.send_sync(
            access,
            Some(msg),
            vec![promote.raw_bytes().to_vec()],
            vec![promote_sig.clone()],
        );
        m.raw.pump(Duration::from_millis(500)).await;
        assert!(
            wait_for(CONVERGE, || async {
                rejected(&a, "changes_in_sync_message").await >= in_message_before + 3.0
            })
            .await,
            "the {role}'s smuggled changes were counted:\n{}",
            a.get_text("/metrics").await
        );
        // Three violations: A cut the member off.
        let mut cut_off = false;
        for _ in 0..100 {
            m.raw.pump(Duration::from_millis(100)).await;
            if m.raw.closed >= 1 || !m.raw.is_connected(&m.node) {
                cut_off = true;
                break;
            }
        }
        assert!(cut_off, "A disconnected the {role}");
        assert_eq!(all_heads(&a, &ws).await, a_before, "nothing applied on A");
        assert_eq!(all_heads(&b, &ws).await, b_before, "nothing reached B");
        // 3. Reconnected, the same changes through the checked path: the
        //    viewer may not write at all, the developer not the access
        //    document.
        let a_id = m.node;
        m.raw.connect(&a.addr(), &a_id).await.expect("reconnect");
        m.open(token);
        m.sync_for(Duration::from_secs(1)).await;
        let unauthorized_before = rejected(&a, "unauthorized").await;
        m.send_sync(
            access,
            None,
            vec![promote.raw_bytes().to_vec()],
            vec![promote_sig],
        );
        if role == "viewer" {
            m.send_sync(file, None, vec![edit.raw_bytes().to_vec()], vec![edit_sig]);
        }
        m.raw.pump(Duration::from_millis(500)).await;
        assert!(
            wait_for(CONVERGE, || async {
                rejected(&a, "unauthorized").await > unauthorized_before
            })
            .await,
            "A refused the {role}'s checked-path changes:\n{}",
            a.get_text("/metrics").await
        );
        // Nothing the member sent is anywhere; its role is what A gave.
        let detail = a.get_json(&format!("/api/v1/workspaces/{ws}")).await;
        let listed = detail["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|x| x["peer_id"] == m.raw.peer_id().to_string())
            .cloned()
            .expect("listed");
        assert_eq!(listed["role"], role, "{detail}");
        untouched_and_syncing(&a, &b, &ws, &(a_before, b_before), role).await;
    }
    // The honest team still syncs both ways.
    assert_eq!(
        put(&b, &ws, "from-b.txt", "b").await,
        reqwest::StatusCode::OK
    );
    assert!(
        wait_for(CONVERGE, || async {
            a.file(&ws, "from-b.txt").await.is_some()
                && all_heads(&a, &ws).await == all_heads(&b, &ws).await
        })
        .await,
        "B's write reached A:\nA:\n{}\nB:\n{}",
        a.log_text(),
        b.log_text()
    );
}

/// The token id recorded in the access document for `peer`, read from the
/// member's copy.
fn recorded_token_id(m: &Member, peer: &str) -> String {
    let (am, _) = &m.docs[&access_doc(&m.ws)];
    let members = match am.get(automerge::ROOT, "members") {
        Ok(Some((_, x))) => x,
        other => panic!("no members: {other:?}"),
    };
    let entry = match am.get(&members, peer) {
        Ok(Some((_, x))) => x,
        other => panic!("no entry for {peer}: {other:?}"),
    };
    match am.get(&entry, "token_id") {
        Ok(Some((automerge::Value::Scalar(v), _))) => v.as_str().expect("a string").to_owned(),
        other => panic!("no token id for {peer}: {other:?}"),
    }
}

/// issue 12, finding 3: a delegated admin revokes the owner — by peer id
/// and by token id through its CLI, and by a crafted access-document change
/// sent to the owner and to a developer. Refused everywhere; the owner keeps
/// writing and every member receives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delegated_admin_cannot_revoke_the_owner() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b, ws) = team(tmp.path()).await;
    let c = Node::start_with(
        &tmp.path().join("c"),
        xencode_tests::free_port(),
        &[a.addr()],
    )
    .expect("c");
    invite_and_join(&a, &ws, &c, "admin");
    assert!(
        wait_for(CONVERGE, || async {
            c.file(&ws, "notes.txt").await.is_some()
        })
        .await,
        "C synced:\n{}",
        c.log_text()
    );
    let (mut r, r_token) = hostile_member(&a, &ws, [71; 32], "admin").await;
    let owner_token = recorded_token_id(&r, &a.peer_id);
    assert_eq!(owner_token.len(), 128, "{owner_token}");
    assert!(
        wait_for(CONVERGE, || async {
            c.get_text(&format!("/api/v1/workspaces/{ws}"))
                .await
                .contains(&r.raw.peer_id().to_string())
        })
        .await
    );

    // 1. Through C's CLI, by peer id and by token id.
    for target in [a.peer_id.as_str(), owner_token.as_str()] {
        let out = c.cli(&["revoke", &ws, target]);
        assert!(!out.status.success(), "C revoked the owner by {target}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("creator cannot be revoked"), "{err}");
    }

    // 2. A crafted, correctly signed access change from an admin: revoking
    //    the owner by peer id and by token id. Sent to A, and to B directly.
    let a_before = all_heads(&a, &ws).await;
    let b_before = all_heads(&b, &ws).await;
    let me = r.raw.peer_id().to_string();
    let owner = a.peer_id.clone();
    let token_for_change = owner_token.clone();
    let (change, sig) = r.change(access_doc(&r.ws), None, |am| {
        revoke_in(am, &owner, "peer", &me);
        revoke_in(am, &token_for_change, "token", &me);
    });
    let access = access_doc(&r.ws);
    let unauthorized_a = rejected(&a, "unauthorized").await;
    r.send_sync(
        access,
        None,
        vec![change.raw_bytes().to_vec()],
        vec![sig.clone()],
    );
    r.raw.pump(Duration::from_millis(500)).await;
    let b_id: PeerId = b.peer_id.parse().expect("peer");
    r.raw.connect(&b.addr(), &b_id).await.expect("connect to B");
    r.node = b_id;
    r.open(r_token);
    r.sync_for(Duration::from_secs(2)).await;
    assert!(
        r.others
            .iter()
            .filter(|f| matches!(f, Frame::Accept { .. }))
            .count()
            >= 2,
        "B admitted the admin: {:?}",
        r.others
    );
    let unauthorized_b = rejected(&b, "unauthorized").await;
    r.send_sync(access, None, vec![change.raw_bytes().to_vec()], vec![sig]);
    r.raw.pump(Duration::from_millis(500)).await;
    assert!(
        wait_for(CONVERGE, || async {
            rejected(&a, "unauthorized").await > unauthorized_a
                && rejected(&b, "unauthorized").await > unauthorized_b
        })
        .await,
        "A and B refused the change:\nA:\n{}\nB:\n{}",
        a.get_text("/metrics").await,
        b.get_text("/metrics").await
    );
    assert_eq!(all_heads(&a, &ws).await, a_before);
    assert_eq!(all_heads(&b, &ws).await, b_before);

    // 3. The owner keeps writing, and every member receives it.
    assert_eq!(
        put(&a, &ws, "owner-still-here.txt", "yes").await,
        reqwest::StatusCode::OK
    );
    assert!(
        wait_for(CONVERGE, || async {
            b.file(&ws, "owner-still-here.txt").await.is_some()
                && c.file(&ws, "owner-still-here.txt").await.is_some()
        })
        .await,
        "B and C received the owner's write:\nB:\n{}\nC:\n{}",
        b.log_text(),
        c.log_text()
    );
    for node in [&a, &b, &c] {
        let detail = node.get_json(&format!("/api/v1/workspaces/{ws}")).await;
        let owner_entry = detail["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|x| x["peer_id"] == a.peer_id)
            .cloned()
            .expect("owner listed");
        assert_eq!(owner_entry["role"], "admin", "{detail}");
        assert_eq!(owner_entry["revoked"], false, "{detail}");
    }
}

/// A real token with `n` facts and a 5-atom rule appended: as a first-party
/// block (anyone holding the bytes can), or as a third-party block signed
/// with `signer` (the holder's own key, the "right key").
fn datalog_bomb(token: &[u8], root: &[u8; 32], salt: u64, signer: Option<&[u8; 32]>) -> Vec<u8> {
    use biscuit_auth::builder::{Algorithm, BlockBuilder};
    use biscuit_auth::{Biscuit, KeyPair, PrivateKey, PublicKey};
    let root = PublicKey::from_bytes(root, Algorithm::Ed25519).expect("root key");
    let biscuit = Biscuit::from(token, root).expect("a real token");
    let mut block = BlockBuilder::new();
    for i in 0..40u64 {
        block = block
            .fact(format!("n({})", salt * 1000 + i).as_str())
            .expect("fact");
    }
    block = block
        .rule("big($a, $b, $c, $d, $e) <- n($a), n($b), n($c), n($d), n($e)")
        .expect("rule");
    let out = match signer {
        None => biscuit.append(block).expect("append"),
        Some(secret) => {
            let kp = KeyPair::from(
                &PrivateKey::from_bytes(secret, Algorithm::Ed25519).expect("private key"),
            );
            let signed = biscuit
                .third_party_request()
                .expect("request")
                .create_block(&kp.private(), block)
                .expect("block");
            biscuit
                .append_third_party(kp.public(), signed)
                .expect("append")
        }
    };
    out.to_vec().expect("bytes")
}

/// issue 12, finding 2: Opens whose token carries a datalog bomb (40 facts
/// and a 5-atom rule appended to a real invitation), from a stranger's key
/// and from the invitee's own, and a crafted invitation given to `join`:
/// all refused, while the API keeps answering (its latency during the
/// attack is printed) and the team keeps syncing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn datalog_bomb_tokens_are_refused_while_the_node_keeps_answering() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b, ws) = team(tmp.path()).await;
    let ws_id: WorkspaceId = ws.parse().expect("ws");
    let a_id: PeerId = a.peer_id.parse().expect("peer");
    let invitee_secret = [83u8; 32];
    let invitee = xencode_tests::raw_peer::RawPeer::new(invitee_secret).expect("raw");
    let invite = last_line(&a.cli(&[
        "invite",
        &ws,
        &invitee.peer_id().to_string(),
        "--role",
        "viewer",
    ]));
    let inv_holder = invitee.peer_id();
    drop(invitee);
    let inv = Invitation::decode(&invite).expect("invitation");

    // The API, polled every 10 ms during the attack.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poll = {
        let (url, token, stop) = (a.api_url.clone(), a.token.clone(), stop.clone());
        let path = format!("{url}/api/v1/workspaces/{ws}");
        tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client");
            let mut times = Vec::new();
            let mut failures = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = std::time::Instant::now();
                match http.get(&path).bearer_auth(&token).send().await {
                    Ok(r) if r.status().is_success() => times.push(started.elapsed()),
                    _ => failures += 1,
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (times, failures)
        })
    };

    let mut opens = 0usize;
    let mut accepted = 0usize;
    let attack_started = std::time::Instant::now();
    for (who, secret, signer) in [
        ("a stranger", [82u8; 32], None),
        ("the invitee", invitee_secret, Some(invitee_secret)),
    ] {
        let mut raw = xencode_tests::raw_peer::RawPeer::new(secret).expect("raw");
        for round in 0..40u64 {
            if !raw.is_connected(&a_id) {
                raw.connect(&a.addr(), &a_id).await.expect("connect");
            }
            // Three a connection: the third strike cuts it off.
            for k in 0..3u64 {
                let token = datalog_bomb(&inv.token, &inv.root_key, round * 3 + k, signer.as_ref());
                raw.send(
                    &a_id,
                    xencode_tests::member::frame(&Frame::Open {
                        workspace: ws_id,
                        token,
                    }),
                );
                opens += 1;
            }
            raw.pump(Duration::from_millis(150)).await;
        }
        raw.pump(Duration::from_secs(1)).await;
        for bytes in &raw.received {
            match xencode_protocol::wire::decode(bytes) {
                Ok(Frame::Refuse { reason, .. }) => {
                    assert_eq!(reason, "not authorized", "{who}: refusals say nothing");
                }
                Ok(Frame::Accept { .. }) => accepted += 1,
                // A opening its own session to a member it knows (the
                // invitee), with its own token.
                Ok(Frame::Open { .. }) if signer.is_some() => {}
                other => panic!("{who} was sent {other:?}"),
            }
        }
    }
    let attack = attack_started.elapsed();
    // A crafted invitation given to `join` on a fresh node.
    let d = Node::start(&tmp.path().join("d")).expect("d");
    let crafted = Invitation {
        token: datalog_bomb(&inv.token, &inv.root_key, 999, None),
        ..inv.clone()
    }
    .encode();
    let join_started = std::time::Instant::now();
    let out = d.cli(&["join", &crafted]);
    let join_took = join_started.elapsed();
    assert!(!out.status.success(), "the crafted invitation was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invitation"), "{err}");
    assert!(xencode_tests::health_ok(&d.api_url));

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut times, failures) = poll.await.expect("poller");
    times.sort();
    let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
    println!(
        "token-bomb attack: {opens} Opens in {attack:.2?}; API during it: {} requests, p50 {:.2?}, p99 {:.2?}, max {:.2?}, {failures} failed; `join` with a crafted invitation refused in {join_took:.2?}",
        times.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
    assert_eq!(accepted, 0, "no bomb token opened a session");
    assert_eq!(
        failures, 0,
        "the API answered every request during the attack"
    );
    assert!(times.len() > 20, "the API was polled during the attack");
    assert!(
        a.metric(r#"xencode_peer_violations_total{kind="bad_token"}"#)
            .await
            >= 10.0
    );
    // The stranger's refused sessions were tallied, not chained one by one;
    // the invitee's are chained (it is a member, accountable by name).
    let out = a.cli(&["--json", "audit", "--limit", "100000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log: serde_json::Value = serde_json::from_slice(&out.stdout).expect("audit json");
    let stranger = format!(
        "peer:{}",
        xencode_tests::raw_peer::RawPeer::new([82u8; 32])
            .expect("raw")
            .peer_id()
    );
    let refused_by = |who: &str| {
        log["entries"]
            .as_array()
            .map(|es| {
                es.iter()
                    .filter(|e| e["action"] == "sync.open" && e["decision"] == "deny")
                    .filter(|e| e["who"] == who)
                    .count()
            })
            .unwrap_or(0)
    };
    let tallied: u64 = log["refusals"]
        .as_array()
        .expect("refusals")
        .iter()
        .filter(|t| t["source"] == "peer")
        .map(|t| t["count"].as_u64().unwrap_or(0))
        .sum();
    let member = format!("peer:{}", inv_holder);
    println!(
        "audit: the stranger's refused sessions: {} chained, {tallied} tallied; the invitee's: {} chained",
        refused_by(&stranger),
        refused_by(&member)
    );
    assert_eq!(
        refused_by(&stranger),
        0,
        "a stranger's refusals are not chained"
    );
    assert!(tallied >= 100, "{tallied} tallied");
    assert!(refused_by(&member) >= 1, "a member's refusals are chained");
    // The team still syncs.
    assert_eq!(
        put(&b, &ws, "after.txt", "b").await,
        reqwest::StatusCode::OK
    );
    assert!(
        wait_for(CONVERGE, || async {
            a.file(&ws, "after.txt").await.is_some()
        })
        .await,
        "B's write reached A after the attack:\n{}",
        a.log_text()
    );
}

/// issue 12: a revoked member sends its changes inside the sync message, in
/// the frame and as a catch-up batch — over its old session and after
/// reopening it with its revoked token. Nothing is applied anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_member_cannot_write_by_any_path() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b, ws) = team(tmp.path()).await;
    let (mut m, token) = hostile_member(&a, &ws, [91; 32], "developer").await;
    let out = a.cli(&["revoke", &ws, &m.raw.peer_id().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_for(CONVERGE, || async {
            all_heads(&a, &ws).await == all_heads(&b, &ws).await
        })
        .await
    );
    m.sync_for(Duration::from_secs(2)).await;
    let (a_before, b_before) = (all_heads(&a, &ws).await, all_heads(&b, &ws).await);
    let (promote, promote_sig) = promote_self(&mut m);
    let (edit, edit_sig) = edit_file(&mut m);
    let access = access_doc(&m.ws);
    let file = *m
        .docs
        .keys()
        .find(|d| **d != access && **d != index_doc(&m.ws))
        .expect("file");
    for attempt in 0..2 {
        if attempt == 1 {
            // Reopen with the revoked token: refused.
            if !m.raw.is_connected(&m.node) {
                let a_id = m.node;
                m.raw.connect(&a.addr(), &a_id).await.expect("reconnect");
            }
            m.others.clear();
            m.open(token.clone());
            m.sync_for(Duration::from_secs(1)).await;
            assert!(
                m.others.iter().all(
                    |f| matches!(f, Frame::Refuse { reason, .. } if reason == "not authorized")
                ),
                "{:?}",
                m.others
            );
        }
        let msg = m.message_carrying(access, &[&promote]);
        m.send_sync(access, Some(msg), Vec::new(), vec![promote_sig.clone()]);
        m.send_sync(
            file,
            None,
            vec![edit.raw_bytes().to_vec()],
            vec![edit_sig.clone()],
        );
        let msg = m.message_carrying(file, &[&edit]);
        m.send_sync(
            file,
            Some(msg),
            vec![edit.raw_bytes().to_vec()],
            vec![edit_sig.clone()],
        );
        m.raw.pump(Duration::from_secs(1)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    untouched_and_syncing(&a, &b, &ws, &(a_before, b_before), "revoked").await;
}

/// issue 12, finding 8: a revoked peer invited again gets a token that
/// works — it syncs and its writes reach the team.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_peer_invited_again_writes_again() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b, ws) = team(tmp.path()).await;
    let out = a.cli(&["revoke", &ws, &b.peer_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_for(CONVERGE, || async {
            put(&b, &ws, "while-revoked.txt", "no").await == reqwest::StatusCode::FORBIDDEN
        })
        .await,
        "B learned of its revocation"
    );
    invite_and_join(&a, &ws, &b, "developer");
    assert!(
        wait_for(CONVERGE, || async {
            put(&b, &ws, "back.txt", "yes").await == reqwest::StatusCode::OK
        })
        .await,
        "B may write again:\n{}",
        b.log_text()
    );
    assert!(
        wait_for(CONVERGE, || async {
            a.file(&ws, "back.txt").await.as_deref() == Some(&b"yes"[..])
        })
        .await,
        "A accepted B's write after the new invitation:\nA:\n{}\nB:\n{}",
        a.log_text(),
        b.log_text()
    );
    let detail = a.get_json(&format!("/api/v1/workspaces/{ws}")).await;
    let entry = detail["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|x| x["peer_id"] == b.peer_id)
        .cloned()
        .expect("listed");
    assert_eq!(entry["revoked"], false, "{detail}");
}

/// issue 12, findings 4 and 5: 5,000 requests with invented methods and a
/// flood of requests with a wrong token (some from a page's `Origin`) leave
/// `/metrics` and the audit log bounded, and the entry about what the user
/// did survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invented_methods_and_401_floods_leave_metrics_and_the_audit_log_bounded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::start(&tmp.path().join("a")).expect("a");
    let ws = last_line(&a.cli(&["workspace", "create", "audited"]));
    let http = reqwest::Client::new();
    let url = format!("{}/api/v1/workspaces", a.api_url);
    let invent = |from: usize| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            for i in from..from + 5000 {
                let method =
                    reqwest::Method::from_bytes(format!("X{i}").as_bytes()).expect("method");
                let _ = http.request(method, &url).send().await;
            }
        }
    };
    let metrics_before = a.get_text("/metrics").await.len();
    invent(0).await;
    let metrics_once = a.get_text("/metrics").await.len();
    invent(5000).await;
    let metrics_twice = a.get_text("/metrics").await.len();
    println!(
        "/metrics: {metrics_before} bytes before, {metrics_once} after 5,000 invented methods, {metrics_twice} after 5,000 more"
    );
    // The first batch adds the `other` series of one route; the second
    // adds nothing but longer counts.
    assert!(
        metrics_once < metrics_before + 16 * 1024,
        "{metrics_before} -> {metrics_once}"
    );
    assert!(
        metrics_twice < metrics_once + 256,
        "{metrics_once} -> {metrics_twice}"
    );
    assert!(a.get_text("/metrics").await.contains(r#"method="other""#));

    let audit = |a: &Node| {
        let out = a.cli(&["--json", "audit", "--limit", "100000"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("json")
    };
    let before = audit(&a);
    let entries_before = before["entries"].as_array().expect("entries").len();
    // The 10,000 requests with invented methods were tallied, not logged.
    assert!(entries_before < 20, "{entries_before} entries: {before}");
    for i in 0..3000 {
        let mut req = http.get(&url).bearer_auth("wrong");
        if i % 2 == 0 {
            req = req.header("Origin", format!("http://evil{}.example", i % 100));
        }
        let status = req.send().await.expect("answered").status();
        assert!(status.is_client_error(), "{status}");
    }
    let after = audit(&a);
    let entries = after["entries"].as_array().expect("entries");
    let refusals = after["refusals"].as_array().expect("refusals");
    let refused: u64 = refusals
        .iter()
        .map(|r| r["count"].as_u64().unwrap_or(0))
        .sum();
    println!(
        "audit: {entries_before} entries before, {} after 3,000 refused requests, which became {} tallies counting {refused}",
        entries.len(),
        refusals.len()
    );
    assert!(refused >= 3000, "{after}");
    let minutes: std::collections::BTreeSet<u64> = refusals
        .iter()
        .filter_map(|r| r["minute"].as_u64())
        .collect();
    // At most 32 tallies per minute and flush; each of the two audit reads
    // flushes the minute so far.
    assert!(
        refusals.len() <= 32 * (minutes.len() + 2),
        "{} tallies over {} minutes",
        refusals.len(),
        minutes.len()
    );
    // Only the two audit reads themselves were added to the chain.
    assert!(
        entries.len() <= entries_before + 3,
        "{} -> {}",
        entries_before,
        entries.len()
    );
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "POST /api/v1/workspaces" && e["decision"] == "allow"),
        "the member's own entry survives: {after}"
    );
    let _ = ws;
}

/// issue 12, finding 6: the data directory is 0700 (and `init` tightens an
/// existing one), the store, the API token and every backup are 0600.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_data_directory_the_store_and_backups_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("a");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = xencode_tests::cli(&dir, &["init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&dir), 0o700, "init tightened the data directory");
    let a = Node::start(&dir).expect("a");
    let ws = last_line(&a.cli(&["workspace", "create", "private"]));
    assert_eq!(
        put(&a, &ws, "secret.txt", "content").await,
        reqwest::StatusCode::OK
    );
    for f in ["xencode.redb", "api-token", "identity.key", "config.toml"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    let backup = tmp.path().join("backup.redb");
    let out = a.cli(&["backup", backup.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&backup), 0o600, "the CLI's backup");
    // The node's own snapshot file, before it streams it, is private too:
    // no other file in the data directory is readable by others.
    for entry in std::fs::read_dir(&dir).expect("list") {
        let p = entry.expect("entry").path();
        if p.is_file() && p.file_name().is_some_and(|n| n != "api-url") {
            assert_eq!(mode(&p) & 0o077, 0, "{}", p.display());
        }
    }
    let a_dir = a.dir.clone();
    drop(a);
    // Restoring keeps the store private whatever the backup's mode was.
    std::fs::set_permissions(&backup, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = xencode_tests::cli(&a_dir, &["restore", backup.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        mode(&a_dir.join("xencode.redb")),
        0o600,
        "the restored store"
    );
}
