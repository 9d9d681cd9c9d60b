//! A hostile peer speaking raw `/xencode/sync/1` to a real node: malformed
//! and oversize frames, content outside a session, a stolen token, forged
//! and replayed signatures. The node keeps serving its honest teammate,
//! counts the violations, applies nothing and leaks nothing.

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT};
use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use xencode_protocol::envelope::SignedHead;
use xencode_protocol::ids::actor_id;
use xencode_protocol::invite::Invitation;
use xencode_protocol::wire::{self, Frame};
use xencode_protocol::{DocId, WorkspaceId};
use xencode_tests::raw_peer::{RawPeer, RawRequest};
use xencode_tests::{Node, health_ok, last_line, put, wait_for};

const CONVERGE: Duration = Duration::from_secs(60);
const SECRET: [u8; 32] = [42; 32];

fn frame(f: &Frame) -> RawRequest {
    RawRequest::honest(wire::encode(f).expect("encode"))
}

/// The ids a node derives for a workspace's access and index documents.
fn access_doc(ws: &WorkspaceId) -> DocId {
    DocId::derive(ws, b"access-document\0")
}
fn index_doc(ws: &WorkspaceId) -> DocId {
    DocId::derive(ws, b"index-document\0\0")
}

/// A change made by the raw peer's own actor (epoch 0), as raw bytes.
fn own_change(public: &[u8; 32]) -> (Vec<u8>, [u8; 32]) {
    let mut am = AutoCommit::new();
    am.set_actor(ActorId::from(actor_id(public, 0).as_slice()));
    am.put(ROOT, "injected", "by a hostile peer").expect("put");
    am.commit();
    let change = am.get_last_local_change().expect("change").clone();
    (change.raw_bytes().to_vec(), change.hash().0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_peer_is_refused_counted_and_learns_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = Node::start(&tmp.path().join("a")).expect("a");
    let b = Node::start(&tmp.path().join("b")).expect("b");
    let ws = last_line(&a.cli(&["workspace", "create", "guarded"]));
    assert_eq!(
        put(&a, &ws, "secret-plans.txt", "classified").await,
        reqwest::StatusCode::OK
    );
    let for_b = last_line(&a.cli(&["invite", &ws, &b.peer_id, "--role", "developer"]));
    assert_eq!(last_line(&b.cli(&["join", &for_b])), ws);
    assert!(
        wait_for(CONVERGE, || async {
            b.file(&ws, "secret-plans.txt").await.is_some()
        })
        .await
    );
    let ws_id: WorkspaceId = ws.parse().expect("workspace id");
    let a_id: PeerId = a.peer_id.parse().expect("peer id");

    let mut raw = RawPeer::new(SECRET).expect("raw peer");
    raw.connect(&a.addr(), &a_id).await.expect("connect");

    // 1. A length prefix of 100 MB with a few bytes behind it.
    raw.send(
        &a_id,
        RawRequest {
            declared_len: 100 * 1024 * 1024,
            body: vec![0; 16],
        },
    );
    raw.pump(Duration::from_secs(1)).await;
    // 2. Garbage, content outside a session, and B's stolen token.
    let stolen = Invitation::decode(&for_b).expect("invitation").token;
    raw.send(&a_id, RawRequest::honest(vec![0xff; 100]));
    raw.pump(Duration::from_millis(300)).await;
    raw.send(
        &a_id,
        frame(&Frame::Sync {
            workspace: ws_id,
            doc: index_doc(&ws_id),
            message: None,
            changes: vec![vec![1, 2, 3]],
            signatures: vec![],
            sent_ms: 0,
        }),
    );
    raw.pump(Duration::from_millis(300)).await;
    raw.send(
        &a_id,
        frame(&Frame::Open {
            workspace: ws_id,
            token: stolen,
        }),
    );
    raw.pump(Duration::from_secs(2)).await;

    assert!(
        a.metric(r#"xencode_peer_violations_total{kind="malformed_frame"}"#)
            .await
            >= 2.0,
        "{}",
        a.get_text("/metrics").await
    );
    assert!(
        raw.closed >= 1 || !raw.is_connected(&a_id),
        "A disconnected the abusive peer"
    );
    for bytes in &raw.received {
        let text = String::from_utf8_lossy(bytes);
        assert!(!text.contains("secret-plans") && !text.contains("classified"));
        match wire::decode(bytes) {
            Ok(Frame::Refuse { .. } | Frame::Close { .. }) => {}
            other => panic!("a stranger was sent {other:?}"),
        }
    }

    // 3. Invited as a developer, the same peer pushes changes with a forged
    // signature and with a genuine signature replayed into another document.
    let invite = last_line(&a.cli(&[
        "invite",
        &ws,
        &raw.peer_id().to_string(),
        "--role",
        "developer",
    ]));
    let token = Invitation::decode(&invite).expect("invitation").token;
    if !raw.is_connected(&a_id) {
        raw.connect(&a.addr(), &a_id).await.expect("reconnect");
    }
    raw.send(
        &a_id,
        frame(&Frame::Open {
            workspace: ws_id,
            token,
        }),
    );
    raw.pump(Duration::from_secs(1)).await;
    assert!(
        raw.received
            .iter()
            .any(|b| matches!(wire::decode(b), Ok(Frame::Accept { .. }))),
        "A admitted the invited peer"
    );
    let key = SigningKey::from_bytes(&SECRET);
    let public = key.verifying_key().to_bytes();
    let (change, hash) = own_change(&public);
    let mut forged = SignedHead::sign(
        &SigningKey::from_bytes(&[7; 32]),
        0,
        &ws_id,
        &index_doc(&ws_id),
        hash,
    );
    forged.author = public;
    let replayed = SignedHead::sign(&key, 0, &ws_id, &access_doc(&ws_id), hash);
    for sig in [forged, replayed] {
        raw.send(
            &a_id,
            frame(&Frame::Sync {
                workspace: ws_id,
                doc: index_doc(&ws_id),
                message: None,
                changes: vec![change.clone()],
                signatures: vec![sig],
                sent_ms: 0,
            }),
        );
        raw.pump(Duration::from_millis(500)).await;
    }
    assert!(
        wait_for(CONVERGE, || async {
            a.metric(r#"xencode_changes_rejected_total{reason="bad_signature"}"#)
                .await
                >= 2.0
        })
        .await,
        "{}",
        a.get_text("/metrics").await
    );
    assert_eq!(a.files(&ws).await, vec!["secret-plans.txt".to_owned()]);
    assert!(
        !a.get_text(&format!("/api/v1/workspaces/{ws}"))
            .await
            .contains("injected")
    );

    // The node is healthy and still syncs with its honest teammate.
    assert!(health_ok(&a.api_url), "A still answers /health with 200");
    assert_eq!(
        put(&a, &ws, "after-attack.txt", "still here").await,
        reqwest::StatusCode::OK
    );
    assert!(
        wait_for(CONVERGE, || async {
            b.file(&ws, "after-attack.txt").await.as_deref() == Some(&b"still here"[..])
        })
        .await,
        "A kept syncing with B:\n{}",
        a.log_text()
    );
    assert_eq!(
        b.files(&ws).await,
        vec!["after-attack.txt".to_owned(), "secret-plans.txt".to_owned()]
    );
}
