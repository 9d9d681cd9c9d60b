//! A LAN inside one machine: two real nodes in their own network namespaces,
//! joined by a veth pair, find each other by mDNS — no `--peer` — and sync a
//! workspace. mDNS skips loopback, so this cannot run on 127.0.0.1.
//!
//! Needs root and `ip` (iproute2). Elsewhere it skips with the reason, unless
//! `XENCODE_REQUIRE_ALL_TESTS=1` (as in CI), where a skip is a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use xencode_tests::{last_line, run_with_stdin, skip_or_fail, xencode_bin};

const WAIT: Duration = Duration::from_secs(60);

fn skip(reason: &str) {
    skip_or_fail("the LAN test", reason);
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` ({e}); install iproute2"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
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

/// A node running inside a namespace, killed on drop.
struct NsNode {
    ns: String,
    dir: PathBuf,
    child: Child,
}

impl NsNode {
    fn start(ns: &str, dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("data dir");
        let log = std::fs::File::create(dir.join("node.log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(xencode_bin())
            .arg("--data-dir")
            .arg(dir)
            // mDNS on (the default); listen on the LAN interface, no --peer.
            .args([
                "node",
                "--api",
                "127.0.0.1:0",
                "--listen",
                "/ip4/0.0.0.0/tcp/0",
            ])
            .env_remove("XENCODE_HOME")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn xencode in a namespace");
        let node = Self {
            ns: ns.to_owned(),
            dir: dir.to_owned(),
            child,
        };
        let started = Instant::now();
        while !node.cli(&["status"]).status.success() {
            assert!(
                started.elapsed() < WAIT,
                "node in {ns} never became ready:\n{}",
                node.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        node
    }

    /// Runs a CLI command inside the node's namespace (its API is on the
    /// namespace's own loopback).
    fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, &[])
    }

    /// Like [`Self::cli`], feeding `stdin`.
    fn cli_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(xencode_bin())
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args);
        run_with_stdin(cmd, stdin)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    fn until(&self, what: &str, mut f: impl FnMut(&Self) -> bool) {
        let started = Instant::now();
        while !f(self) {
            assert!(
                started.elapsed() < WAIT,
                "{what} (in {}):\n{}",
                self.ns,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn two_nodes_on_a_lan_discover_each_other_by_mdns_and_sync() {
    // Only root can make network namespaces.
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    if !uid.is_ok_and(|u| u == "0") {
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
