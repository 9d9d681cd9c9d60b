//! Harness for end-to-end tests: real `xencode` processes in temporary data
//! directories, talking over real sockets on loopback.
//!
//! The binary is `$XENCODE_BIN` if set, else `target/<profile>/xencode`, built
//! once per test process with `cargo build -p xencode-node --bin xencode`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use serde_json;

pub mod browser;
pub mod member;
pub mod neovim;
pub mod netns;
pub mod ollama_double;
pub mod raw_peer;

use anyhow::{Context, Result, bail};

/// How long a node may take to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Path to the `xencode` binary, building it on first use.
pub fn xencode_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match build_binary() {
        Ok(p) => p,
        Err(e) => panic!("cannot provide the xencode binary: {e:#}"),
    })
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn build_binary() -> Result<PathBuf> {
    if let Ok(bin) = std::env::var("XENCODE_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let root = workspace_root();
    let release = !cfg!(debug_assertions);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--quiet", "-p", "xencode-node", "--bin", "xencode"]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the xencode binary failed");
    }
    let target =
        std::env::var("CARGO_TARGET_DIR").map_or_else(|_| root.join("target"), PathBuf::from);
    let bin = target
        .join(if release { "release" } else { "debug" })
        .join("xencode");
    if !bin.exists() {
        bail!("{} was not built", bin.display());
    }
    Ok(bin)
}

/// Runs `xencode --data-dir DIR ARGS...` to completion.
pub fn cli(dir: &Path, args: &[&str]) -> Output {
    cli_with_stdin(dir, args, &[])
}

/// Like [`cli`], feeding `stdin`.
pub fn cli_with_stdin(dir: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(xencode_bin());
    cmd.arg("--data-dir").arg(dir).args(args);
    run_with_stdin(cmd, stdin)
}

/// Runs `cmd` (without `XENCODE_HOME`) to completion, feeding it `stdin`
/// and capturing its output.
pub fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut child = cmd
        .env_remove("XENCODE_HOME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn xencode");
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin).expect("write stdin");
    }
    child.wait_with_output().expect("wait for xencode")
}

/// The last line of a command's stdout.
pub fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// Asserts success and returns stdout as text.
pub fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A free port on loopback for a node to listen on (TCP and QUIC), checked
/// by binding both and released. Picked below Linux's ephemeral range
/// (32768–60999): a port the kernel handed out for `:0` could be given to
/// an outgoing connection before the node binds it (seen in CI as "Address
/// already in use"). Each pick in this process is a new port; processes
/// start apart by their pid.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id() % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let Ok(port) = u16::try_from(LOW + (base + n) % SPAN) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
        {
            return port;
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `f` every 50 ms until it is true or `timeout` passes.
pub async fn wait_for<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if f().await {
            return true;
        }
        if started.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running `xencode node`.
pub struct Node {
    pub dir: PathBuf,
    pub api_url: String,
    pub token: String,
    /// The libp2p TCP port (fixed, so a restart listens where peers expect).
    pub p2p_port: u16,
    pub peer_id: String,
    child: Child,
    log: PathBuf,
}

impl Node {
    /// Starts a node on a free API port and waits until `/health` is 200.
    pub fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, free_port(), &[])
    }

    /// Starts a node listening for peers on `p2p_port`, dialing `peers`.
    pub fn start_with(dir: &Path, p2p_port: u16, peers: &[String]) -> Result<Self> {
        let mut args = Vec::new();
        for p in peers {
            args.extend(["--peer".to_owned(), p.clone()]);
        }
        Self::start_args(dir, Some(p2p_port), &args)
    }

    /// Starts a node with `args` after `node`: listening for peers on
    /// `p2p_port`, or on no address at all (reachable only through a
    /// relay, as behind a NAT) when `None`.
    pub fn start_args(dir: &Path, p2p_port: Option<u16>, args: &[String]) -> Result<Self> {
        let api_url_file = dir.join("api-url");
        let _ = std::fs::remove_file(&api_url_file);
        std::fs::create_dir_all(dir)?;
        let log = dir.with_extension(format!("node-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(xencode_bin());
        cmd.arg("--data-dir")
            .arg(dir)
            .args(["node", "--api", "127.0.0.1:0", "--no-mdns"]);
        match p2p_port {
            Some(port) => {
                cmd.args(["--listen", &format!("/ip4/127.0.0.1/tcp/{port}")]);
            }
            None => {
                cmd.env("XENCODE_NETWORK_LISTEN", "");
            }
        }
        cmd.args(args);
        let p2p_port = p2p_port.unwrap_or(0);
        let child = cmd
            .env_remove("XENCODE_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("spawning xencode node")?;
        let mut node = Node {
            dir: dir.to_owned(),
            api_url: String::new(),
            token: String::new(),
            p2p_port,
            peer_id: String::new(),
            child,
            log,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = node.child.try_wait()? {
                bail!(
                    "the node exited with {status} before it was ready:\n{}",
                    node.log_text()
                );
            }
            if let Ok(url) = std::fs::read_to_string(&api_url_file) {
                node.api_url = url.trim().to_owned();
                node.token = std::fs::read_to_string(dir.join("api-token"))?
                    .trim()
                    .to_owned();
                if health_ok(&node.api_url) {
                    node.peer_id = last_line(&cli(dir, &["id"]));
                    return Ok(node);
                }
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "the node was not ready within {READY_TIMEOUT:?}:\n{}",
                    node.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The multiaddr peers dial to reach this node.
    pub fn addr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.p2p_port, self.peer_id)
    }

    /// Runs a CLI command against this node's data directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.dir, args)
    }

    /// `GET` a JSON document from the API.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let resp = self
            .http()
            .get(format!("{}{path}", self.api_url))
            .send()
            .await
            .expect("GET");
        resp.json().await.unwrap_or(serde_json::Value::Null)
    }

    /// The sorted file paths of a workspace, or empty if it is not here.
    pub async fn files(&self, ws: &str) -> Vec<String> {
        let list = self
            .get_json(&format!("/api/v1/workspaces/{ws}/files"))
            .await;
        list["files"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter_map(|x| x["path"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A file's bytes, if present.
    pub async fn file(&self, ws: &str, path: &str) -> Option<Vec<u8>> {
        let resp = self
            .http()
            .get(format!(
                "{}/api/v1/workspaces/{ws}/files/{path}",
                self.api_url
            ))
            .send()
            .await
            .ok()?;
        if !resp.status().is_success() {
            return None;
        }
        resp.bytes().await.ok().map(|b| b.to_vec())
    }

    /// The heads of a workspace (sorted), empty if it is not here.
    pub async fn heads(&self, ws: &str) -> Vec<String> {
        heads_of(&self.get_json(&format!("/api/v1/workspaces/{ws}")).await)
    }

    /// `GET` a text document from the API (empty on failure).
    pub async fn get_text(&self, path: &str) -> String {
        match self
            .http()
            .get(format!("{}{path}", self.api_url))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The value of one sample of `/metrics`, given as the metric name with
    /// its labels exactly as exported (e.g. `xencode_x_total{kind="a"}`);
    /// 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        self.get_text("/metrics")
            .await
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// What the node logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak and current resident memory, in KiB, from /proc.
    pub fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the orderly exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        self.child.wait().expect("wait for node")
    }

    /// An HTTP client for this node's API, with the bearer token.
    pub fn http(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.token))
            .expect("token is a valid header value");
        headers.insert(reqwest::header::AUTHORIZATION, value);
        reqwest::Client::builder()
            .no_proxy()
            .default_headers(headers)
            .build()
            .expect("http client")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking `GET /health` over a plain socket (no runtime needed).
pub fn health_ok(api_url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(authority) = api_url.strip_prefix("http://") else {
        return false;
    };
    let Ok(mut s) = std::net::TcpStream::connect(authority) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let req = format!("GET /health HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return false;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.starts_with("HTTP/1.1 200")
}

/// Whether every node holds `ws` with the same (non-empty) heads.
pub async fn converged(nodes: &[&Node], ws: &str) -> bool {
    let first = nodes[0].heads(ws).await;
    if first.is_empty() {
        return false;
    }
    for n in &nodes[1..] {
        if n.heads(ws).await != first {
            return false;
        }
    }
    true
}

/// Inserts `insert` at `pos` of a file through the splice route.
pub async fn splice(
    node: &Node,
    ws: &str,
    path: &str,
    pos: u64,
    insert: &str,
) -> reqwest::StatusCode {
    node.http()
        .post(format!("{}/api/v1/workspaces/{ws}/splice", node.api_url))
        .json(&serde_json::json!({"path": path, "pos": pos, "insert": insert}))
        .send()
        .await
        .map(|r| r.status())
        .unwrap_or(reqwest::StatusCode::SERVICE_UNAVAILABLE)
}

/// `PUT`s a file; the status (503 if the node did not answer).
pub async fn put(node: &Node, ws: &str, path: &str, body: &str) -> reqwest::StatusCode {
    node.http()
        .put(format!(
            "{}/api/v1/workspaces/{ws}/files/{path}",
            node.api_url
        ))
        .body(body.to_owned())
        .send()
        .await
        .map(|r| r.status())
        .unwrap_or(reqwest::StatusCode::SERVICE_UNAVAILABLE)
}

/// `inviter` invites `joiner` into `ws` with `role`, and `joiner` joins;
/// both steps must succeed. Syncing starts; nothing waits for it here.
pub fn invite_and_join(inviter: &Node, ws: &str, joiner: &Node, role: &str) {
    let invite = inviter.cli(&["invite", ws, &joiner.peer_id, "--role", role]);
    let token = last_line(&invite);
    ok_stdout(&invite);
    let joined = joiner.cli(&["join", &token]);
    assert_eq!(
        last_line(&joined),
        ws,
        "{}",
        String::from_utf8_lossy(&joined.stderr)
    );
}

/// Two nodes, A and B, sharing workspace `ws` through linked folders `fa`
/// and `fb` under `tmp` (the folder and editor tests).
pub struct Pair {
    pub tmp: tempfile::TempDir,
    pub a: Node,
    pub b: Node,
    pub ws: String,
    pub fa: PathBuf,
    pub fb: PathBuf,
}

impl Pair {
    /// A shares a new folder holding `files` (path, text) as a workspace; B
    /// joins as a developer and links its own folder; both folders hold the
    /// files when this returns.
    pub async fn sharing(files: &[(&str, &str)]) -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = Node::start(&tmp.path().join("a")).expect("a");
        let b = Node::start(&tmp.path().join("b")).expect("b");
        let fa = tmp.path().join("folder-a");
        let fb = tmp.path().join("folder-b");
        for (path, body) in files {
            let p = fa.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, body).expect("write");
        }
        let dir = fa.to_str().expect("utf8");
        let out = a.cli(&["folder", "share", dir, "--name", "pair"]);
        ok_stdout(&out);
        let ws = last_line(&out);
        invite_and_join(&a, &ws, &b, "developer");
        ok_stdout(&b.cli(&["folder", "link", &ws, fb.to_str().expect("utf8")]));
        for (path, body) in files {
            let p = fb.join(path);
            let arrived = wait_for(Duration::from_secs(60), || {
                let p = p.clone();
                async move { std::fs::read_to_string(&p).is_ok_and(|s| s == *body) }
            })
            .await;
            assert!(arrived, "{path} never reached B's folder");
        }
        Self {
            tmp,
            a,
            b,
            ws,
            fa,
            fb,
        }
    }

    /// Both nodes' logs, for a failure message.
    pub fn logs(&self) -> String {
        format!(
            "--- A ---\n{}\n--- B ---\n{}",
            self.a.log_text(),
            self.b.log_text()
        )
    }
}

/// The JSON a `--json` command printed on stdout (its stderr in the panic
/// if it is not JSON).
pub fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The error code a failed `--json` command printed.
pub fn error_code(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    json_of(out)["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Skips a test that cannot run on this machine, saying why; under
/// `XENCODE_REQUIRE_ALL_TESTS=1` (as in CI) a skip is a failure instead.
pub fn skip_or_fail(test: &str, reason: &str) {
    if std::env::var("XENCODE_REQUIRE_ALL_TESTS").is_ok_and(|v| v == "1") {
        panic!("XENCODE_REQUIRE_ALL_TESTS=1 but {test} cannot run: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
}

/// The `heads` of a workspace's JSON (`GET /api/v1/workspaces/{id}`, or
/// `xencode --json workspace show`), empty if absent.
pub fn heads_of(detail: &serde_json::Value) -> Vec<String> {
    detail["heads"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Issue 17's restart case on `node`: `files` Python modules of 60 lines
/// written under `scratch/tree`, shared as a folder (one change record
/// each) and unlinked, then the first `edited` of them spliced `splices`
/// times each. The workspace's id.
pub async fn uncompacted_modules(
    node: &Node,
    scratch: &Path,
    files: usize,
    edited: usize,
    splices: usize,
) -> Result<String> {
    let tree = scratch.join("tree");
    std::fs::create_dir_all(tree.join("src"))?;
    for i in 0..files {
        let body: String = (0..60)
            .map(|l| format!("value_{i}_{l} = compute({l}, \"line {l} of module {i}\")\n"))
            .collect();
        std::fs::write(tree.join(format!("src/module_{i:04}.py")), body)?;
    }
    let tree_s = tree
        .to_str()
        .context("the tree's path is not UTF-8")?
        .to_owned();
    let shared = node.cli(&["folder", "share", &tree_s]);
    ok_stdout(&shared);
    let ws = last_line(&shared);
    ok_stdout(&node.cli(&["folder", "unlink", &tree_s]));
    for i in 0..edited {
        for s in 0..splices {
            let path = format!("src/module_{i:04}.py");
            let status = splice(node, &ws, &path, 0, &format!("# edit {s}\n")).await;
            anyhow::ensure!(status.is_success(), "splice {i}/{s}: {status}");
        }
    }
    Ok(ws)
}
