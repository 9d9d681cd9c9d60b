//! Teammates behind NATs (issue 19), in network namespaces: a "public"
//! namespace where member R runs `--relay`, and two homes, each behind its
//! own router namespace that masquerades (nftables) and forwards nothing in
//! that was not asked for. A and B can be dialled by nobody; A invites B and
//! the invitation alone gets B to A, through R.
//!
//! A stranger behind a NAT is refused a reservation; a revoked member
//! behind a NAT loses the relay: its reservation and circuits are cut and
//! it is refused a new one.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables). Elsewhere it skips with
//! the reason, unless `XENCODE_REQUIRE_ALL_TESTS=1` (as in CI).

use std::time::{Duration, Instant};

use xencode_tests::netns::{
    Internet, Nat, NsNode, connection, has, is_root, json, put, start_in as start, team,
};
use xencode_tests::{last_line, skip_or_fail};

/// A and B each write a file; each file reaches the other.
fn edits_cross(a: &NsNode, b: &NsNode, ws: &str) {
    put(a, ws, "notes.md", "from A\n");
    put(b, ws, "todo.md", "from B\n");
    b.until("A's edit never reached B", |b| {
        has(b, ws, "notes.md", "from A\n")
    });
    a.until("B's edit never reached A", |a| {
        has(a, ws, "todo.md", "from B\n")
    });
}

fn skip(reason: &str) {
    skip_or_fail("the NAT test", reason);
}

fn internet(nat: Nat) -> Option<Internet> {
    if !is_root() {
        skip("network namespaces need root");
        return None;
    }
    match Internet::new(nat) {
        Ok(net) => Some(net),
        Err(e) => {
            skip(&e);
            None
        }
    }
}

#[test]
fn behind_two_nats_members_sync_through_a_members_relay_and_punch_a_hole() {
    let Some(net) = internet(Nat::EndpointIndependent) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (r, a, mut b, ws) = team(&net, tmp.path());
    let (a_id, b_id) = (last_line(&a.cli(&["id"])), last_line(&b.cli(&["id"])));

    // Edits both ways.
    edits_cross(&a, &b, &ws);

    // A and B reach each other: first through R, then, the NATs mapping
    // each home port to one public port, by a hole DCUtR punches.
    b.until("B never connected to A", |b| {
        !connection(b, &a_id).is_empty()
    });
    // Both sides call the connection hole-punched: the side that drove
    // DCUtR hears it worked, the other sees a direct connection come up
    // beside, or right after, the relayed one.
    let started = Instant::now();
    loop {
        let (on_b, on_a) = (connection(&b, &a_id), connection(&a, &b_id));
        if on_b == "hole-punched" && on_a == "hole-punched" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the hole-punched connection is not labelled so on both sides (B: {on_b}, A: {on_a}).\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // B goes offline; A writes; B comes back behind its NAT and catches up.
    b.kill9();
    put(&a, &ws, "while-b-was-away.md", "news\n");
    let b = start(net.home(1), &tmp.path().join("b"), false);
    b.until("B never caught up after its restart", |b| {
        has(b, &ws, "while-b-was-away.md", "news\n")
    });
    put(&b, &ws, "back.md", "B is back\n");
    a.until("B's edit after its restart never reached A", |a| {
        has(a, &ws, "back.md", "B is back\n")
    });
    b.until("B never reconnected to A", |b| {
        !connection(b, &a_id).is_empty()
    });

    // AutoNAT: R can be dialled, A cannot (and so keeps its reservation).
    r.until("R never found itself reachable", |r| {
        json(r, &["status"])["reachability"] == "public"
    });
    a.until("A never found itself behind a NAT", |a| {
        json(a, &["status"])["reachability"] == "private"
    });
    let listen = json(&a, &["status"])["listen"].to_string();
    assert!(listen.contains("/p2p-circuit/"), "{listen}");
    drop(b_id);
}

#[test]
fn behind_a_symmetric_nat_sync_stays_relayed() {
    let Some(net) = internet(Nat::Symmetric) else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let (r, a, b, ws) = team(&net, tmp.path());
    let (a_id, b_id) = (last_line(&a.cli(&["id"])), last_line(&b.cli(&["id"])));
    edits_cross(&a, &b, &ws);
    b.until("B never connected to A through R", |b| {
        connection(b, &a_id) == "relayed"
    });

    // A stranger behind A's NAT, told where R is, asks it for a reservation
    // (and to reach A through it): refused, counted, and given no circuit
    // address.
    let r_id = last_line(&r.cli(&["id"]));
    let stranger = NsNode::start_args(
        net.home(0),
        &tmp.path().join("s"),
        &[
            "--listen",
            "/ip4/0.0.0.0/tcp/7422",
            "--no-mdns",
            "--relay-via",
            &format!("/ip4/198.18.1.1/tcp/7421/p2p/{r_id}"),
            "--peer",
            &format!("/ip4/198.18.1.1/tcp/7421/p2p/{r_id}/p2p-circuit/p2p/{a_id}"),
        ],
    );
    let s_id = last_line(&stranger.cli(&["id"]));
    r.until("R never refused the stranger's reservation", |r| {
        r.log()
            .lines()
            .any(|l| l.contains("relay reservation refused") && l.contains(s_id.as_str()))
    });
    let listen = json(&stranger, &["status"])["listen"].to_string();
    assert!(!listen.contains("/p2p-circuit"), "{listen}");
    assert!(
        connection(&a, &s_id).is_empty(),
        "the stranger reached A through R"
    );
    drop(stranger);
    // Random ports defeat hole punching; the relayed connection carries on.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        assert_ne!(connection(&b, &a_id), "hole-punched");
        std::thread::sleep(Duration::from_millis(500));
    }
    put(&a, &ws, "later.md", "still relayed\n");
    b.until("a later edit never reached B", |b| {
        has(b, &ws, "later.md", "still relayed\n")
    });
    assert_eq!(connection(&b, &a_id), "relayed");

    // R, the workspace's admin, revokes B, which reaches A only through R:
    // R cuts B's reservation and circuits at once, refuses B's next
    // reservation, and A loses B.
    let out = r.cli(&["revoke", &ws, &b_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logged = |node: &NsNode, what: &str| {
        node.log()
            .lines()
            .any(|l| l.contains(what) && l.contains(b_id.as_str()))
    };
    r.until("R never cut the revoked member's relay use", |r| {
        logged(r, "no longer a member")
    });
    r.until("R never refused the revoked member a reservation", |r| {
        logged(r, "relay reservation refused")
    });
    a.until("A still reaches the revoked member", |a| {
        connection(a, &b_id).is_empty()
    });
}
