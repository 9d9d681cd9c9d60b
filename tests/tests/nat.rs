//! Teammates behind NATs (issue 19), in network namespaces: a "public"
//! namespace where member R runs `--relay`, and two homes, each behind its
//! own router namespace that masquerades (nftables) and forwards nothing in
//! that was not asked for. A and B can be dialled by nobody; A invites B and
//! the invitation alone gets B to A, through R.
//!
//! A revoked member behind a NAT loses the relay: its reservation and
//! circuits are cut and it is refused a new one.
//!
//! Needs root, `ip` (iproute2) and `nft` (nftables). Elsewhere it skips with
//! the reason, unless `XENCODE_REQUIRE_ALL_TESTS=1` (as in CI).

use std::path::Path;
use std::time::{Duration, Instant};

use xencode_tests::netns::{NsNode, ip, is_root, run};
use xencode_tests::{last_line, skip_or_fail};

/// How a home router maps its home's connections to its public address.
#[derive(Clone, Copy, PartialEq)]
enum Nat {
    /// Plain masquerade: a home port keeps its public port while it is
    /// free (endpoint-independent mapping): hole punching can work.
    EndpointIndependent,
    /// Masquerade with random ports: every connection gets a new public
    /// port (a symmetric NAT): hole punching cannot work.
    Symmetric,
}

/// pub ← router a ← home a; pub ← router b ← home b. Deleted on drop.
/// A router, as a home router does, drops what comes in unasked: also for
/// itself, where Linux would otherwise keep a connection-tracking entry for
/// the other home's first punched packet and give the home's own packets of
/// that flow another port.
struct Internet {
    names: Vec<String>,
}

impl Internet {
    fn pub_ns(&self) -> &str {
        &self.names[0]
    }
    fn home(&self, n: usize) -> &str {
        &self.names[3 + n]
    }

    fn new(nat: Nat) -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let tag = if nat == Nat::Symmetric { "s" } else { "e" };
        let names: Vec<String> = ["p", "ra", "rb", "ha", "hb"]
            .iter()
            .map(|n| format!("xn{id}{tag}{n}"))
            .collect();
        let net = Self { names };
        for ns in &net.names {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        let [p, ra, rb, ha, hb] = [0, 1, 2, 3, 4].map(|i| net.names[i].as_str());
        sysctl(p, "net.ipv4.ip_forward=1")?;
        for (n, router, home) in [(1, ra, ha), (2, rb, hb)] {
            let up = format!("up{n}");
            ip(&[
                "link", "add", &up, "netns", p, "type", "veth", "peer", "name", "wan", "netns",
                router,
            ])?;
            ip(&[
                "link", "add", "lan", "netns", router, "type", "veth", "peer", "name", "eth",
                "netns", home,
            ])?;
            let public = format!("198.18.{n}");
            let private = format!("10.{n}.0");
            ip(&[
                "-n",
                p,
                "addr",
                "add",
                &format!("{public}.1/24"),
                "dev",
                &up,
            ])?;
            ip(&["-n", p, "link", "set", &up, "up"])?;
            ip(&[
                "-n",
                router,
                "addr",
                "add",
                &format!("{public}.2/24"),
                "dev",
                "wan",
            ])?;
            ip(&[
                "-n",
                router,
                "addr",
                "add",
                &format!("{private}.1/24"),
                "dev",
                "lan",
            ])?;
            ip(&["-n", router, "link", "set", "wan", "up"])?;
            ip(&["-n", router, "link", "set", "lan", "up"])?;
            ip(&[
                "-n",
                router,
                "route",
                "add",
                "default",
                "via",
                &format!("{public}.1"),
            ])?;
            sysctl(router, "net.ipv4.ip_forward=1")?;
            ip(&[
                "-n",
                home,
                "addr",
                "add",
                &format!("{private}.2/24"),
                "dev",
                "eth",
            ])?;
            ip(&["-n", home, "link", "set", "eth", "up"])?;
            ip(&[
                "-n",
                home,
                "route",
                "add",
                "default",
                "via",
                &format!("{private}.1"),
            ])?;
            let masquerade = match nat {
                Nat::EndpointIndependent => "masquerade",
                Nat::Symmetric => "masquerade random",
            };
            let rules = format!(
                r#"table ip nat {{
  chain post {{
    type nat hook postrouting priority 100;
    oifname "wan" {masquerade};
  }}
}}
table ip filter {{
  chain forwarding {{
    type filter hook forward priority 0; policy drop;
    ct state established,related accept;
    iifname "lan" oifname "wan" accept;
  }}
  chain incoming {{
    type filter hook input priority 0; policy drop;
    ct state established,related accept;
    iifname "lo" accept;
    iifname "lan" accept;
  }}
}}
"#
            );
            let rules_file = std::env::temp_dir().join(format!("{router}.nft"));
            std::fs::write(&rules_file, rules).map_err(|e| e.to_string())?;
            let loaded = run(
                "ip",
                &[
                    "netns",
                    "exec",
                    router,
                    "nft",
                    "-f",
                    &rules_file.display().to_string(),
                ],
            );
            let _ = std::fs::remove_file(&rules_file);
            loaded.map_err(|e| {
                if e.starts_with("cannot run") {
                    format!("{e}; install nftables")
                } else {
                    e
                }
            })?;
        }
        Ok(net)
    }
}

fn sysctl(ns: &str, setting: &str) -> Result<(), String> {
    run("ip", &["netns", "exec", ns, "sysctl", "-qw", setting])
}

impl Drop for Internet {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

fn start(ns: &str, dir: &Path, relay: bool) -> NsNode {
    let mut args = vec![
        "--listen",
        "/ip4/0.0.0.0/tcp/7421",
        "--listen",
        "/ip4/0.0.0.0/udp/7421/quic-v1",
        "--no-mdns",
    ];
    if relay {
        args.push("--relay");
    }
    NsNode::start_args(ns, dir, &args)
}

fn json(node: &NsNode, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_slice(&node.cli(&all).stdout).unwrap_or_default()
}

/// How `node` is connected to `peer` (`connection` in `xencode peers`).
fn connection(node: &NsNode, peer: &str) -> String {
    json(node, &["peers"])["peers"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["peer_id"] == peer).cloned())
        .and_then(|p| p["connection"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn has(node: &NsNode, ws: &str, path: &str, body: &str) -> bool {
    let out = node.cli(&["file", "get", ws, path]);
    out.status.success() && out.stdout == body.as_bytes()
}

/// `file put`, once the node may write (a joiner's role arrives with the
/// member list, in its first sync).
fn put(node: &NsNode, ws: &str, path: &str, body: &str) {
    node.until("the node never could write", |n| {
        n.cli_with_stdin(&["file", "put", ws, path], body.as_bytes())
            .status
            .success()
    });
}

/// R in public creates the workspace and invites A (admin); A reserves a
/// slot on R; A invites B; B joins through R. Returns (R, A, B, ws).
fn team(net: &Internet, tmp: &Path) -> (NsNode, NsNode, NsNode, String) {
    let r = start(net.pub_ns(), &tmp.join("r"), true);
    let a = start(net.home(0), &tmp.join("a"), false);
    let b = start(net.home(1), &tmp.join("b"), false);
    let (a_id, b_id) = (last_line(&a.cli(&["id"])), last_line(&b.cli(&["id"])));
    let ws = last_line(&r.cli(&["workspace", "create", "behind nats"]));
    let invite = last_line(&r.cli(&["invite", &ws, &a_id, "--role", "admin"]));
    assert_eq!(last_line(&a.cli(&["join", &invite])), ws, "{}", a.log());
    a.until("A never got a circuit address through R", |a| {
        json(a, &["status"])["listen"].as_array().is_some_and(|l| {
            l.iter()
                .any(|x| x.as_str().is_some_and(|x| x.contains("/p2p-circuit/")))
        })
    });
    let invite = last_line(&a.cli(&["invite", &ws, &b_id, "--role", "developer"]));
    assert_eq!(last_line(&b.cli(&["join", &invite])), ws, "{}", b.log());
    (r, a, b, ws)
}

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
