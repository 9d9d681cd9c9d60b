//! Network namespaces for LAN and fault tests (root only): the `ip` tool,
//! a node running inside a namespace, and the check that we may make them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{run_with_stdin, xencode_bin};

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
