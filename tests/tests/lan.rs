//! A LAN inside one machine: two real nodes in their own network namespaces,
//! joined by a veth pair, find each other by mDNS — no `--peer` — and sync a
//! workspace. mDNS skips loopback, so this cannot run on 127.0.0.1.
//!
//! Needs root and `ip` (iproute2). Elsewhere it skips with the reason, unless
//! `XENCODE_REQUIRE_ALL_TESTS=1` (as in CI), where a skip is a failure.

use xencode_tests::netns::{NsNode, ip, is_root};
use xencode_tests::{last_line, skip_or_fail};

fn skip(reason: &str) {
    skip_or_fail("the LAN test", reason);
}

/// Two namespaces joined by veth, deleted (with everything in them) on drop.
struct Lan {
    names: [String; 2],
}

impl Lan {
    fn new() -> Result<Self, String> {
        let id = std::process::id();
        let lan = Self {
            names: [format!("xenlan{id}a"), format!("xenlan{id}b")],
        };
        let [a, b] = &lan.names;
        ip(&["netns", "add", a])?;
        ip(&["netns", "add", b])?;
        ip(&[
            "link", "add", "veth0", "netns", a, "type", "veth", "peer", "name", "veth0", "netns", b,
        ])?;
        for (i, ns) in lan.names.iter().enumerate() {
            let addr = format!("10.77.{}.{}/24", id % 200, i + 1);
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", "veth0", "up"])?;
            ip(&["-n", ns, "addr", "add", &addr, "dev", "veth0"])?;
            // Multicast (mDNS) leaves the namespace only with a route.
            ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", "veth0"])?;
        }
        Ok(lan)
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

#[test]
fn two_nodes_on_a_lan_discover_each_other_by_mdns_and_sync() {
    // Only root can make network namespaces.
    if !is_root() {
        return skip("network namespaces need root");
    }
    let lan = match Lan::new() {
        Ok(lan) => lan,
        Err(e) => return skip(&e),
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = NsNode::start(&lan.names[0], &tmp.path().join("a"));
    let b = NsNode::start(&lan.names[1], &tmp.path().join("b"));
    let b_id = last_line(&b.cli(&["id"]));

    // Discovery alone connects them: no --peer, no invitation yet.
    a.until("A never discovered B by mDNS", |a| {
        let peers = String::from_utf8_lossy(&a.cli(&["--json", "peers"]).stdout).into_owned();
        let v: serde_json::Value = serde_json::from_str(&peers).unwrap_or_default();
        v["peers"].as_array().is_some_and(|l| {
            l.iter()
                .any(|p| p["peer_id"] == b_id.as_str() && p["connected"] == true)
        })
    });

    // Then the team works as on loopback: invite, join, sync.
    let ws = last_line(&a.cli(&["workspace", "create", "lan team"]));
    let invite = last_line(&a.cli(&["invite", &ws, &b_id, "--role", "developer"]));
    let joined = b.cli(&["join", &invite]);
    assert_eq!(
        last_line(&joined),
        ws,
        "{}",
        String::from_utf8_lossy(&joined.stderr)
    );
    let put = a.cli_with_stdin(&["file", "put", &ws, "notes/lan.md"], b"found over mDNS\n");
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    b.until("the file never reached B", |b| {
        b.cli(&["file", "get", &ws, "notes/lan.md"]).stdout == b"found over mDNS\n"
    });
    // And back: B writes, A sees it.
    let out = b.cli(&["file", "put", &ws, "from-b.txt", "/dev/null"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    a.until("B's file never reached A", |a| {
        String::from_utf8_lossy(&a.cli(&["file", "list", &ws]).stdout)
            .lines()
            .any(|l| l == "from-b.txt")
    });
    drop((a, b));
    drop(lan);
}
