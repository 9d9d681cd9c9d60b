//! A hostile peer speaking raw `/xencode/sync/2` to a real node: malformed
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

/// Nodes A and B, and a workspace on A holding a secret file.
async fn guarded_pair(dir: &std::path::Path) -> (Node, Node, String) {
    let a = Node::start(&dir.join("a")).expect("a");
    let b = Node::start(&dir.join("b")).expect("b");
    let ws = last_line(&a.cli(&["workspace", "create", "guarded"]));
    assert_eq!(
        put(&a, &ws, "secret-plans.txt", "classified").await,
        reqwest::StatusCode::OK
    );
    (a, b, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_peer_is_refused_counted_and_learns_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b, ws) = guarded_pair(tmp.path()).await;
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

    // 0. Where is B? The members' Kademlia does not run for a stranger.
    let b_id: PeerId = b.peer_id.parse().expect("peer id");
    let told = raw
        .closest_peers(&a_id, &a.addr(), b_id)
        .await
        .expect("lookup");
    assert!(
        !told.contains(&b_id),
        "a stranger learned where a member is: {told:?}"
    );

    // 1. A length prefix of 100 MB with a few bytes behind it.
    raw.send(
        &a_id,
        RawRequest {
            declared_len: 100 * 1024 * 1024,
            body: vec![0; 16],
            more: Vec::new(),
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
    // Every connection A closed is gone (A forgets the peer's strikes only
    // when its last connection is), then a fresh one.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while raw.is_connected(&a_id) && std::time::Instant::now() < deadline {
        raw.pump(Duration::from_millis(50)).await;
    }
    raw.connect(&a.addr(), &a_id).await.expect("reconnect");
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

/// Only refusals and closes, and no workspace content, reached a stranger.
fn learned_nothing(raw: &RawPeer, secrets: &[&str]) {
    for bytes in &raw.received {
        let text = String::from_utf8_lossy(bytes);
        assert!(secrets.iter().all(|s| !text.contains(s)), "leaked: {text}");
        match wire::decode(bytes) {
            Ok(Frame::Refuse { .. } | Frame::Close { .. }) => {}
            other => panic!("a stranger was sent {other:?}"),
        }
    }
    for (topic, data) in &raw.gossip {
        assert_eq!(
            data.len(),
            16,
            "gossip on {topic} is a 16-byte digest, nothing more"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn floods_connection_storms_guessed_topics_and_replays_leave_the_node_bounded_and_syncing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b, ws) = guarded_pair(tmp.path()).await;
    xencode_tests::invite_and_join(&a, &ws, &b, "developer");
    let ws_id: WorkspaceId = ws.parse().expect("workspace id");
    let a_id: PeerId = a.peer_id.parse().expect("peer id");
    let secrets = ["secret-plans", "classified"];
    let (_, rss_before) = a.memory_kib();

    // 1. Gossip (first: gossipsub scores down many peers behind one IP
    // address, as the storm below makes them). The real topic, as an
    // ex-member who knows the workspace id would compute it, then junk on
    // it; later, 200 guessed topics.
    let mut gossiper = RawPeer::new([88; 32]).expect("gossiper");
    gossiper.connect(&a.addr(), &a_id).await.expect("connect");
    gossiper.subscribe(&ws_id.topic());
    gossiper.pump(Duration::from_secs(2)).await;
    let mut published = 0;
    for i in 0..200u32 {
        // Not 16 bytes: not an announcement. Small, so each fits the
        // node's gossip transmit limit (an oversize RPC is dropped whole).
        published +=
            usize::from(gossiper.publish(&ws_id.topic(), vec![i as u8; 17 + (i as usize % 20)]));
        gossiper.pump(Duration::from_millis(5)).await;
    }
    for i in 0..200u32 {
        gossiper.subscribe(&format!("/xencode/ann/1/{:032x}", u128::from(i) * 7919));
    }
    gossiper.subscribe(&ws);
    // A writes meanwhile: any announcement the gossiper sees is a digest.
    assert_eq!(
        put(&a, &ws, "more-secrets.txt", "classified too").await,
        reqwest::StatusCode::OK
    );
    gossiper.pump(Duration::from_secs(3)).await;
    let rejected = a
        .metric(r#"xencode_gossip_messages_total{direction="in",outcome="rejected"}"#)
        .await;
    eprintln!(
        "gossip: {published} junk announcements published, {rejected} rejected, {} messages reached the gossiper",
        gossiper.gossip.len()
    );
    assert!(rejected >= 1.0, "{}", a.get_text("/metrics").await);

    // 2. A connection storm: 300 TCP connections that never finish the
    // handshake (half-open), 50 that send junk instead of noise.
    let mut half_open = Vec::new();
    for i in 0..350 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", a.p2p_port)).await {
            if i >= 300 {
                use tokio::io::AsyncWriteExt;
                let _ = s.write_all(&[0x13; 4096]).await;
            }
            half_open.push(s);
        }
    }
    // 3. Many identities, each connecting and sending one junk frame.
    let mut crowd = Vec::new();
    for i in 0..30u8 {
        let mut p = RawPeer::new([100 + i; 32]).expect("peer");
        if p.connect(&a.addr(), &a_id).await.is_ok() {
            p.send(&a_id, RawRequest::honest(vec![i; 64]));
            crowd.push(p);
        }
    }
    for p in &mut crowd {
        p.pump(Duration::from_millis(100)).await;
    }
    // Meanwhile the honest teammate keeps writing, and it arrives.
    assert_eq!(
        put(&b, &ws, "during-storm.txt", "b writes").await,
        reqwest::StatusCode::OK
    );
    assert!(
        wait_for(CONVERGE, || async {
            a.file(&ws, "during-storm.txt").await.is_some()
        })
        .await,
        "B's write reached A during the connection storm"
    );
    drop(half_open);
    // The crowd leaves, having learned nothing.
    for p in &crowd {
        learned_nothing(p, &secrets);
    }
    drop(crowd);

    // 4. A flood: a stranger sends 3000 junk frames of 32 KiB as fast as it
    // can; A cuts it off.
    let mut flood = RawPeer::new([77; 32]).expect("flooder");
    flood.connect(&a.addr(), &a_id).await.expect("connect");
    let started = std::time::Instant::now();
    let mut sent = 0;
    for i in 0..3000u32 {
        if !flood.is_connected(&a_id) {
            break;
        }
        flood.send(&a_id, RawRequest::honest(vec![(i % 251) as u8; 32 * 1024]));
        sent += 1;
        if i % 50 == 0 {
            flood.pump(Duration::from_millis(5)).await;
        }
    }
    flood.pump(Duration::from_secs(2)).await;
    eprintln!(
        "flood: {sent} frames sent in {:?}, connection closed {} times",
        started.elapsed(),
        flood.closed
    );
    assert!(
        flood.closed >= 1 || !flood.is_connected(&a_id),
        "A disconnected the flooder"
    );

    // 5. Replays: a member captures A's frames, is revoked, then replays its
    // old token and the signed changes it was sent.
    let mut ex = RawPeer::new([99; 32]).expect("ex-member");
    let invite = last_line(&a.cli(&[
        "invite",
        &ws,
        &ex.peer_id().to_string(),
        "--role",
        "developer",
    ]));
    let old_token = Invitation::decode(&invite).expect("invitation").token;
    ex.connect(&a.addr(), &a_id).await.expect("connect");
    ex.send(
        &a_id,
        frame(&Frame::Open {
            workspace: ws_id,
            token: old_token.clone(),
        }),
    );
    ex.pump(Duration::from_secs(3)).await;
    let captured: Vec<Vec<u8>> = ex
        .received
        .iter()
        .filter(|b| matches!(wire::decode(b), Ok(Frame::Sync { .. })))
        .cloned()
        .collect();
    assert!(!captured.is_empty(), "the member was sent the workspace");
    let out = a.cli(&["revoke", &ws, &ex.peer_id().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let heads_before = a.heads(&ws).await;
    ex.pump(Duration::from_secs(1)).await;
    ex.received.clear();
    if !ex.is_connected(&a_id) {
        ex.connect(&a.addr(), &a_id).await.expect("reconnect");
    }
    ex.send(
        &a_id,
        frame(&Frame::Open {
            workspace: ws_id,
            token: old_token,
        }),
    );
    for bytes in &captured {
        ex.send(&a_id, RawRequest::honest(bytes.clone()));
    }
    ex.pump(Duration::from_secs(2)).await;
    for bytes in &ex.received {
        match wire::decode(bytes) {
            Ok(Frame::Refuse { .. } | Frame::Close { .. }) => {}
            other => panic!("a revoked member was sent {other:?}"),
        }
    }
    assert_eq!(a.heads(&ws).await, heads_before, "replays changed nothing");

    // Nobody outside learned anything; A is healthy, bounded, still syncing.
    for p in [&flood, &gossiper] {
        learned_nothing(p, &secrets);
    }
    assert!(health_ok(&a.api_url));
    assert_eq!(
        put(&b, &ws, "after-attacks.txt", "still syncing").await,
        reqwest::StatusCode::OK
    );
    assert!(
        wait_for(CONVERGE, || async {
            a.file(&ws, "after-attacks.txt").await.is_some()
                && b.file(&ws, "more-secrets.txt").await.is_some()
        })
        .await,
        "A and B kept syncing:\n{}",
        a.log_text()
    );
    let (peak, now) = a.memory_kib();
    let violations = a.get_text("/metrics").await;
    let violations: Vec<&str> = violations
        .lines()
        .filter(|l| l.starts_with("xencode_peer_violations_total"))
        .collect();
    let report = format!(
        "node RSS before {rss_before} KiB, peak {peak} KiB, after {now} KiB\n\
         flood frames sent {sent}; gossip junk rejected {rejected}\n{}\n",
        violations.join("\n")
    );
    eprintln!("{report}");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("report.txt"), &report).expect("report");
    assert!(
        peak > 0 && peak < 1024 * 1024,
        "peak RSS stays under 1 GiB: {report}"
    );
}
