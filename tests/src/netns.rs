//! Network namespaces for LAN, fault and NAT tests (root only): the `ip`
//! tool, a node running inside a namespace, the check that we may make
//! them, and a small internet of NAT routers (`Internet`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{last_line, run_with_stdin, xencode_bin};

const WAIT: Duration = Duration::from_secs(60);

/// Whether this process runs as root (namespaces need it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a command, with its stderr in the error.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `{program}` ({e})"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip` with `args`.
pub fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args).map_err(|e| {
        if e.starts_with("cannot run") {
            format!("{e}; install iproute2")
        } else {
            e
        }
    })
}

/// A node running inside a namespace, killed on drop.
pub struct NsNode {
    pub ns: String,
    pub dir: PathBuf,
    child: Child,
}

impl NsNode {
    /// Starts a node in namespace `ns` with mDNS on, listening on all
    /// addresses at a random port.
    pub fn start(ns: &str, dir: &Path) -> Self {
        Self::start_with(ns, dir, "/ip4/0.0.0.0/tcp/0")
    }

    /// Starts a node in `ns` listening on `listen` (a multiaddr).
    pub fn start_with(ns: &str, dir: &Path, listen: &str) -> Self {
        // mDNS on (the default); listen on the LAN interface, no --peer.
        Self::start_args(ns, dir, &["--listen", listen])
    }

    /// Starts a node in `ns` with `args` after `node --api 127.0.0.1:0`.
    pub fn start_args(ns: &str, dir: &Path, args: &[&str]) -> Self {
        std::fs::create_dir_all(dir).expect("data dir");
        let log = std::fs::File::create(dir.join("node.log")).expect("log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(xencode_bin())
            .arg("--data-dir")
            .arg(dir)
            .args(["node", "--api", "127.0.0.1:0"])
            .args(args)
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
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, &[])
    }

    /// Like [`Self::cli`], feeding `stdin`.
    pub fn cli_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns])
            .arg(xencode_bin())
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args);
        run_with_stdin(cmd, stdin)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }

    pub fn until(&self, what: &str, mut f: impl FnMut(&Self) -> bool) {
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

impl NsNode {
    /// Kills the node with SIGKILL (`ip netns exec` execs the node, so the
    /// child is the node itself).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a home router maps its home's connections to its public address.
#[derive(Clone, Copy, PartialEq)]
pub enum Nat {
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
pub struct Internet {
    names: Vec<String>,
}

impl Internet {
    pub fn pub_ns(&self) -> &str {
        &self.names[0]
    }
    pub fn home(&self, n: usize) -> &str {
        &self.names[3 + n]
    }

    pub fn new(nat: Nat) -> Result<Self, String> {
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

/// A node in `ns` listening on TCP and QUIC port 7421, mDNS off.
pub fn start_in(ns: &str, dir: &Path, relay: bool) -> NsNode {
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

/// `xencode --json ARGS` in the node's namespace.
pub fn json(node: &NsNode, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_slice(&node.cli(&all).stdout).unwrap_or_default()
}

/// How `node` is connected to `peer` (`connection` in `xencode peers`).
pub fn connection(node: &NsNode, peer: &str) -> String {
    json(node, &["peers"])["peers"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["peer_id"] == peer).cloned())
        .and_then(|p| p["connection"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Whether the node serves `body` at `path`.
pub fn has(node: &NsNode, ws: &str, path: &str, body: &str) -> bool {
    let out = node.cli(&["file", "get", ws, path]);
    out.status.success() && out.stdout == body.as_bytes()
}

/// `file put`, once the node may write (a joiner's role arrives with the
/// member list, in its first sync).
pub fn put(node: &NsNode, ws: &str, path: &str, body: &str) {
    node.until("the node never could write", |n| {
        n.cli_with_stdin(&["file", "put", ws, path], body.as_bytes())
            .status
            .success()
    });
}

/// R in public creates the workspace and invites A (admin); A reserves a
/// slot on R; A invites B; B joins through R. Returns (R, A, B, ws).
pub fn team(net: &Internet, tmp: &Path) -> (NsNode, NsNode, NsNode, String) {
    let r = start_in(net.pub_ns(), &tmp.join("r"), true);
    let a = start_in(net.home(0), &tmp.join("a"), false);
    let b = start_in(net.home(1), &tmp.join("b"), false);
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

impl NsNode {
    /// The node's process id (`ip netns exec` execs the node).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}
