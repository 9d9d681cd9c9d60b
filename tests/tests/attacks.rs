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
        assert_eq!(all_heads(&a, &ws).await, a_before, "nothing applied on A");
        assert_eq!(all_heads(&b, &ws).await, b_before, "nothing reached B");
        assert_eq!(
            a.file(&ws, "notes.txt").await.as_deref(),
            Some(&b"honest"[..])
        );
    }
    // The honest team still syncs both ways.
    assert_eq!(
        put(&b, &ws, "from-b.txt", "b").await,
        reqwest::StatusCode::OK
    );
    assert_eq!(
        put(&a, &ws, "from-a.txt", "a").await,
        reqwest::StatusCode::OK
    );
    assert!(
        wait_for(CONVERGE, || async {
            a.file(&ws, "from-b.txt").await.is_some()
                && b.file(&ws, "from-a.txt").await.is_some()
                && all_heads(&a, &ws).await == all_heads(&b, &ws).await
        })
        .await,
        "A and B kept syncing:\nA:\n{}\nB:\n{}",
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
