//! Members that cannot be dialled reach each other through a member's relay
//! (libp2p circuit relay v2), real processes on loopback: R runs `--relay`
//! and listens; A and B listen on no address at all, as behind NATs, so
//! every connection to them is one they dial or a circuit through R. Behind
//! real NAT routers, with hole punching: `nat.rs`.

use std::time::Duration;

use xencode_tests::{
    Node, cli_with_stdin, free_port, invite_and_join, json_of, last_line, ok_stdout, wait_for,
};

const SETTLE: Duration = Duration::from_secs(60);

/// The node's own addresses (`xencode status --json`).
fn listen_addrs(node: &Node) -> Vec<String> {
    json_of(&node.cli(&["status", "--json"]))["listen"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `peer` as `node` sees it in `GET /api/v1/peers`.
async fn peer_entry(node: &Node, peer: &str) -> serde_json::Value {
    let list = node.get_json("/api/v1/peers").await;
    list["peers"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["peer_id"] == peer).cloned())
        .unwrap_or_default()
}

/// `xencode file put` of `body` at `path`.
fn put_file(node: &Node, ws: &str, path: &str, body: &[u8]) -> std::process::Output {
    cli_with_stdin(&node.dir, &["file", "put", ws, path], body)
}

async fn has_file(node: &Node, ws: &str, path: &str, body: &[u8]) -> bool {
    node.file(ws, path).await.as_deref() == Some(body)
}

/// R relays; A joins through R and reserves a slot on it; A invites B,
/// whose join reaches A only through R.
struct Team {
    tmp: tempfile::TempDir,
    r: Node,
    a: Node,
    b: Node,
    ws: String,
}

impl Team {
    async fn start(relay_config: &str) -> Team {
        let tmp = tempfile::tempdir().expect("tempdir");
        let rdir = tmp.path().join("r");
        std::fs::create_dir_all(&rdir).expect("dir");
        std::fs::write(rdir.join("config.toml"), relay_config).expect("config");
        let r = Node::start_args(&rdir, Some(free_port()), &["--relay".into()]).expect("start R");
        let a = Node::start_args(&tmp.path().join("a"), None, &[]).expect("start A");
        let b = Node::start_args(&tmp.path().join("b"), None, &[]).expect("start B");
        let ws = last_line(&r.cli(&["workspace", "create", "team"]));
        invite_and_join(&r, &ws, &a, "admin");
        // A is a member on R's side, R is one on A's: A asks R for a slot.
        let reserved = wait_for(SETTLE, || async {
            listen_addrs(&a).iter().any(|l| l.contains("/p2p-circuit/"))
        })
        .await;
        assert!(
            reserved,
            "A got no circuit address through R:\n{}",
            a.log_text()
        );
        invite_and_join(&a, &ws, &b, "developer");
        Team { tmp, r, a, b, ws }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn members_no_one_can_dial_sync_through_a_members_relay() {
    let t = Team::start("").await;
    let (r, a, b, ws) = (&t.r, &t.a, &t.b, t.ws.as_str());
    let circuit: Vec<String> = listen_addrs(a)
        .into_iter()
        .filter(|l| l.contains("/p2p-circuit/"))
        .collect();
    assert!(
        circuit
            .iter()
            .all(|l| l.contains(&r.peer_id) && l.ends_with(&a.peer_id)),
        "{circuit:?}"
    );

    // Edits both ways.
    ok_stdout(&put_file(a, ws, "from-a.txt", b"written on A\n"));
    ok_stdout(&put_file(b, ws, "from-b.txt", b"written on B\n"));
    let synced = wait_for(SETTLE, || async {
        has_file(b, ws, "from-a.txt", b"written on A\n").await
            && has_file(a, ws, "from-b.txt", b"written on B\n").await
    })
    .await;
    assert!(synced, "A:\n{}\nB:\n{}", a.log_text(), b.log_text());

    // A and B talk over a circuit through R, and say so, with a round trip.
    let relayed = wait_for(SETTLE, || async {
        let seen = peer_entry(a, &b.peer_id).await;
        seen["connected"] == true
            && seen["connection"] == "relayed"
            && seen["relay"] == r.peer_id.as_str()
            && seen["rtt_us"].as_u64().is_some()
    })
    .await;
    assert!(relayed, "{}", peer_entry(a, &b.peer_id).await);
    let peers = String::from_utf8_lossy(&b.cli(&["peers"]).stdout).into_owned();
    assert!(
        peers.contains(&format!("relayed via {}", r.peer_id)),
        "{peers}"
    );
    assert!(
        peers.contains("connected (direct"),
        "B reaches R directly: {peers}"
    );
    assert!(r.metric("xencode_relay_circuits").await >= 1.0);
    assert!(
        r.metric("xencode_relay_requests_total{kind=\"reservation\",outcome=\"accepted\"}")
            .await
            >= 1.0
    );
    // The sync frames that crossed the circuit were counted as relayed.
    assert!(
        a.metric("xencode_relayed_sync_bytes_total{direction=\"in\"}")
            .await
            > 0.0
    );

    // B goes down; A edits; B comes back and catches up, through R again.
    let bdir = b.dir.clone();
    let Team { tmp, r, a, b, ws } = t;
    b.kill9();
    ok_stdout(&put_file(&a, &ws, "while-b-was-away.txt", b"news\n"));
    let b = Node::start_args(&bdir, None, &[]).expect("restart B");
    let caught_up = wait_for(SETTLE, || async {
        has_file(&b, &ws, "while-b-was-away.txt", b"news\n").await
    })
    .await;
    assert!(caught_up, "B:\n{}", b.log_text());
    drop((r, a, b, tmp));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_refuses_strangers_and_cuts_a_revoked_member() {
    let t = Team::start("").await;
    let (r, a, b, ws) = (&t.r, &t.a, &t.b, t.ws.as_str());
    // B reserves on R too once it knows R as a member.
    let both = wait_for(SETTLE, || async {
        r.metric("xencode_relay_reservations").await >= 2.0
    })
    .await;
    assert!(both, "R:\n{}", r.log_text());

    // A stranger, told where R is and A's circuit address, asks R for a
    // reservation and for a circuit to A: both refused.
    let a_circuit = listen_addrs(a)
        .into_iter()
        .find(|l| l.contains("/p2p-circuit/"))
        .expect("A's circuit address");
    let sdir = t.tmp.path().join("s");
    let s = Node::start_args(
        &sdir,
        None,
        &["--relay-via".into(), r.addr(), "--peer".into(), a_circuit],
    )
    .expect("start S");
    let refused = wait_for(SETTLE, || async {
        r.metric("xencode_relay_requests_total{kind=\"reservation\",outcome=\"denied\"}")
            .await
            >= 1.0
            && r.metric("xencode_relay_requests_total{kind=\"circuit\",outcome=\"denied\"}")
                .await
                >= 1.0
    })
    .await;
    assert!(refused, "R:\n{}", r.log_text());
    // S reaches R, and nobody else.
    assert_eq!(s.metric("xencode_peers_connected").await, 1.0);
    assert!(
        !listen_addrs(&s).iter().any(|l| l.contains("/p2p-circuit/")),
        "the stranger got a circuit address"
    );
    assert_eq!(r.metric("xencode_relay_reservations").await, 2.0);

    // A revokes B: R cuts B's reservation, and refuses it from then on.
    ok_stdout(&a.cli(&["revoke", ws, &b.peer_id]));
    let cut = wait_for(SETTLE, || async {
        r.metric("xencode_relay_reservations").await == 1.0
    })
    .await;
    assert!(cut, "R:\n{}", r.log_text());
    assert!(
        r.log_text().contains("no longer a member"),
        "{}",
        r.log_text()
    );
    // The relay keeps serving A.
    assert!(xencode_tests::health_ok(&r.api_url));
    drop(s);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_circuit_over_its_byte_limit_is_cut_and_the_members_reconnect() {
    let t = Team::start("[network.relay_limits]\nmax_circuit_bytes = 65536\n").await;
    let (r, a, b, ws) = (&t.r, &t.a, &t.b, t.ws.as_str());
    let relayed = wait_for(SETTLE, || async {
        peer_entry(a, &b.peer_id).await["connection"] == "relayed"
    })
    .await;
    assert!(relayed, "{}", peer_entry(a, &b.peer_id).await);
    let circuits = "xencode_relay_requests_total{kind=\"circuit\",outcome=\"accepted\"}";
    let before = r.metric(circuits).await;
    // Three files of 40 KB each: more than one circuit may carry.
    let mut bodies = Vec::new();
    for i in 0..3u32 {
        let body: String = (0..40_000u32)
            .map(|n| char::from(b'a' + ((n * 7 + i * 13) % 26) as u8))
            .collect();
        ok_stdout(&put_file(a, ws, &format!("big-{i}.txt"), body.as_bytes()));
        bodies.push(body);
    }
    let synced = wait_for(Duration::from_secs(120), || async {
        let mut all = true;
        for (i, body) in bodies.iter().enumerate() {
            all &= has_file(b, ws, &format!("big-{i}.txt"), body.as_bytes()).await;
        }
        all
    })
    .await;
    assert!(synced, "B:\n{}", b.log_text());
    // The circuit was cut at the limit and a new one opened.
    let reopened = wait_for(SETTLE, || async {
        r.metric(circuits).await > before
            && peer_entry(a, &b.peer_id).await["connection"] == "relayed"
    })
    .await;
    assert!(reopened, "R:\n{}", r.log_text());
    assert!(xencode_tests::health_ok(&r.api_url));
}

/// A relay limited to 64 KiB/s carries a 384 KB file in no less than the
/// limit allows: the circuit waits (counted), it is not cut, nothing is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_relays_bytes_per_second_limit_paces_circuits_without_cutting_them() {
    const RATE: u64 = 64 * 1024;
    let t = Team::start(&format!(
        "[network.relay_limits]\nmax_bytes_per_sec = {RATE}\n"
    ))
    .await;
    let (r, a, b) = (&t.r, &t.a, &t.b);
    // A workspace R is no member of: its bytes cross only the circuit.
    let ws = last_line(&a.cli(&["workspace", "create", "paced"]));
    let ws = ws.as_str();
    invite_and_join(a, ws, b, "developer");
    let relayed = wait_for(SETTLE, || async {
        peer_entry(a, &b.peer_id).await["connection"] == "relayed"
    })
    .await;
    assert!(relayed, "{}", peer_entry(a, &b.peer_id).await);
    let carried_before = r.metric("xencode_relay_carried_bytes_total").await;
    let circuits = "xencode_relay_requests_total{kind=\"circuit\",outcome=\"accepted\"}";
    let circuits_before = r.metric(circuits).await;
    // Incompressible bytes: nothing shrinks them on the way.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let body: Vec<u8> = (0..384_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let started = std::time::Instant::now();
    ok_stdout(&put_file(a, ws, "paced.bin", &body));
    let arrived = wait_for(Duration::from_secs(120), || async {
        has_file(b, ws, "paced.bin", &body).await
    })
    .await;
    let took = started.elapsed();
    assert!(arrived, "B:\n{}\nR:\n{}", b.log_text(), r.log_text());
    let carried = r.metric("xencode_relay_carried_bytes_total").await - carried_before;
    assert!(
        carried >= body.len() as f64,
        "the relay carried {carried} bytes"
    );
    assert!(r.metric("xencode_relay_paced_total").await >= 1.0);
    // One second of burst, then the rate: (384,000 - 65,536) / 65,536 s.
    let floor = Duration::from_secs_f64((body.len() as u64 - RATE) as f64 / RATE as f64);
    assert!(
        took >= floor,
        "{took:?} is faster than the limit allows ({floor:?})"
    );
    // Paced, never cut: the circuit that carried A and B still does.
    assert_eq!(
        r.metric(circuits).await,
        circuits_before,
        "no new circuit was needed:\n{}",
        r.log_text()
    );
    assert_eq!(peer_entry(a, &b.peer_id).await["connection"], "relayed");
    assert!(xencode_tests::health_ok(&r.api_url));
}

/// Three nodes on loopback, each on its own port.
fn three() -> (tempfile::TempDir, Node, Node, Node) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let start = |name: &str| {
        Node::start_with(&tmp.path().join(name), free_port(), &[]).expect("start a node")
    };
    let (a, b, c) = (start("a"), start("b"), start("c"));
    (tmp, a, b, c)
}

/// The three nodes' logs, for a failure message.
fn logs(a: &Node, b: &Node, c: &Node) -> String {
    format!(
        "A:\n{}\nB:\n{}\nC:\n{}",
        a.log_text(),
        b.log_text(),
        c.log_text()
    )
}

/// B and C stop and start again on new ports: every address anyone had
/// for them is stale.
fn move_both(b: Node, c: Node) -> (Node, Node) {
    let (bdir, cdir) = (b.dir.clone(), c.dir.clone());
    b.stop();
    c.stop();
    let b = Node::start_with(&bdir, free_port(), &[]).expect("restart B elsewhere");
    let c = Node::start_with(&cdir, free_port(), &[]).expect("restart C elsewhere");
    (b, c)
}

/// Whether `node` has a connection to `peer` now.
async fn connected(node: &Node, peer: &Node) -> bool {
    peer_entry(node, &peer.peer_id).await["connected"] == true
}

/// B and C both move (new ports) while away; each reaches only A, which
/// stayed. Their signed address cards travel through A, so B and C find
/// each other where they are now and sync without A; after a restart the
/// kept card still finds C.
#[tokio::test(flavor = "multi_thread")]
async fn members_that_moved_find_each_other_through_a_teammates_cards() {
    let (tmp, a, b, c) = three();
    let ws = last_line(&a.cli(&["workspace", "create", "moving"]));
    invite_and_join(&a, &ws, &b, "developer");
    invite_and_join(&a, &ws, &c, "developer");
    ok_stdout(&put_file(&a, &ws, "start.txt", b"hello\n"));
    let joined = wait_for(SETTLE, || async {
        has_file(&b, &ws, "start.txt", b"hello\n").await
            && has_file(&c, &ws, "start.txt", b"hello\n").await
    })
    .await;
    assert!(joined, "B:\n{}\nC:\n{}", b.log_text(), c.log_text());

    // Both move: new ports, so every address anyone had for them is stale.
    let (b, c) = move_both(b, c);
    let bdir = b.dir.clone();
    let found = wait_for(SETTLE, || async {
        connected(&b, &c).await && connected(&c, &b).await
    })
    .await;
    assert!(
        found,
        "B and C never found each other:\n{}",
        logs(&a, &b, &c)
    );

    // Without A, B and C sync with each other.
    a.stop();
    ok_stdout(&put_file(&b, &ws, "from-b.txt", b"moved B\n"));
    let direct = wait_for(SETTLE, || async {
        has_file(&c, &ws, "from-b.txt", b"moved B\n").await
    })
    .await;
    assert!(direct, "C:\n{}", c.log_text());

    // B restarts (same new port) with A gone: its kept card of C is all it
    // has to find C by.
    let port = b.p2p_port;
    b.stop();
    ok_stdout(&put_file(&c, &ws, "from-c.txt", b"still here\n"));
    let b = Node::start_with(&bdir, port, &[]).expect("restart B");
    let again = wait_for(SETTLE, || async {
        has_file(&b, &ws, "from-c.txt", b"still here\n").await
    })
    .await;
    assert!(again, "B:\n{}\nC:\n{}", b.log_text(), c.log_text());
    drop((b, c, tmp));
}

/// B and C share a workspace A is no member of, so no card of C ever
/// reaches B through A. Both move while away and reach only A (a member of
/// another workspace with each): they find each other by Kademlia through
/// A (with `network.lookup = false` they never do).
#[tokio::test(flavor = "multi_thread")]
async fn a_member_whose_addresses_are_all_stale_is_looked_up_through_a_teammate() {
    let (tmp, a, b, c) = three();
    let with_b = last_line(&a.cli(&["workspace", "create", "a-and-b"]));
    invite_and_join(&a, &with_b, &b, "developer");
    let with_c = last_line(&a.cli(&["workspace", "create", "a-and-c"]));
    invite_and_join(&a, &with_c, &c, "developer");
    let ws = last_line(&b.cli(&["workspace", "create", "b-and-c"]));
    invite_and_join(&b, &ws, &c, "developer");
    ok_stdout(&put_file(&b, &ws, "start.txt", b"hello\n"));
    let joined = wait_for(SETTLE, || async {
        has_file(&c, &ws, "start.txt", b"hello\n").await
    })
    .await;
    assert!(joined, "C:\n{}", c.log_text());

    let (b, c) = move_both(b, c);
    ok_stdout(&put_file(&b, &ws, "after.txt", b"found you\n"));
    let found = wait_for(Duration::from_secs(90), || async {
        has_file(&c, &ws, "after.txt", b"found you\n").await
    })
    .await;
    assert!(
        found,
        "B and C never found each other:\n{}",
        logs(&a, &b, &c)
    );
    assert!(connected(&b, &c).await, "B reaches C itself, not through A");

    // A revokes C, a member of nothing else here: the connection that
    // carried the members' lookups between them is closed.
    ok_stdout(&a.cli(&["revoke", &with_c, &c.peer_id]));
    let closed = wait_for(SETTLE, || async {
        a.log_text()
            .lines()
            .any(|l| l.contains("carry the members' lookups") && l.contains(&c.peer_id))
    })
    .await;
    assert!(closed, "A:\n{}", a.log_text());
    drop((a, tmp));
}
