//! What the benchmarks share: the paper trace, a real `xencode` node process
//! driven over its HTTP API, percentiles, and writing a marked section of
//! `docs/benchmarks.md`.

#![allow(dead_code)] // each bench binary uses its own subset

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

#[path = "../../../analysis/benches/report.rs"]
mod report;
pub mod syncthing;
#[allow(unused_imports)] // each bench binary uses its own subset
pub use report::{
    BoxError, automerge_repo, cpu_secs, ms, percentiles, repo_root, rss_mib, today, write_report,
};
pub type Edit = (usize, usize, String);

#[derive(Deserialize)]
struct Trace {
    #[serde(rename = "endContent")]
    end_content: String,
    txns: Vec<Txn>,
}

#[derive(Deserialize)]
struct Txn {
    patches: Vec<(usize, usize, String)>,
}

/// The automerge-paper trace's edits and final text; `None` (said on
/// stdout) when `../shared/data` is absent.
pub fn paper_trace() -> Result<Option<(Vec<Edit>, String)>, BoxError> {
    trace("automerge-paper.json.gz")
}

/// One of the editing traces in `../shared/data/editing-traces/` (the
/// josephg/editing-traces format) as single edits and the final text;
/// `None`, said on stdout, when the file is absent.
pub fn trace(file: &str) -> Result<Option<(Vec<Edit>, String)>, BoxError> {
    let path = repo_root()?
        .join("../shared/data/editing-traces")
        .join(file);
    if !path.exists() {
        println!(
            "SKIP: {} is absent; this benchmark needs it",
            path.display()
        );
        return Ok(None);
    }
    let mut json = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&path)?).read_to_string(&mut json)?;
    let trace: Trace = serde_json::from_str(&json)?;
    let edits = trace.txns.into_iter().flat_map(|t| t.patches).collect();
    Ok(Some((edits, trace.end_content)))
}

/// Polls `node` every `every` until `path` of `ws` holds `want`; how long
/// that took, or an error after `wait`.
pub async fn until_has(
    node: &NodeProcess,
    ws: &str,
    path: &str,
    want: &[u8],
    every: Duration,
    wait: Duration,
) -> Result<Duration, BoxError> {
    let started = Instant::now();
    while node.file(ws, path).await?.as_deref() != Some(want) {
        if started.elapsed() > wait {
            return Err(format!("{path} never arrived").into());
        }
        tokio::time::sleep(every).await;
    }
    Ok(started.elapsed())
}

/// A listening on a free loopback port, and B, on another, dialling it:
/// the direct pair the sync, relay and folder benchmarks start from.
pub struct DirectPair {
    pub a: NodeProcess,
    pub b: NodeProcess,
    pub b_home: PathBuf,
    /// B's arguments, to restart it the same way.
    pub b_args: Vec<String>,
}

pub async fn direct_pair(dir: &Path) -> Result<DirectPair, BoxError> {
    let (pa, pb) = (free_port()?, free_port()?);
    let a = NodeProcess::start(
        &dir.join("a"),
        &["--listen".into(), format!("/ip4/127.0.0.1/tcp/{pa}")],
    )?;
    let b_home = dir.join("b");
    let b_args = vec![
        "--listen".into(),
        format!("/ip4/127.0.0.1/tcp/{pb}"),
        "--peer".into(),
        format!("/ip4/127.0.0.1/tcp/{pa}/p2p/{}", a.peer_id().await?),
    ];
    let b = NodeProcess::start(&b_home, &b_args)?;
    Ok(DirectPair {
        a,
        b,
        b_home,
        b_args,
    })
}

/// `inviter` makes a workspace named `name` and lets `joiners` in, each
/// with its role; returns the workspace's id.
pub async fn share(
    inviter: &NodeProcess,
    name: &str,
    joiners: &[(&NodeProcess, &str)],
) -> Result<String, BoxError> {
    let ws = inviter
        .post("/api/v1/workspaces", &serde_json::json!({ "name": name }))
        .await?["id"]
        .as_str()
        .ok_or("no workspace id")?
        .to_owned();
    for (joiner, role) in joiners {
        invite(inviter, &ws, joiner, role).await?;
    }
    Ok(ws)
}

/// `inviter` invites `joiner` to workspace `ws` with `role`, and `joiner`
/// joins.
pub async fn invite(
    inviter: &NodeProcess,
    ws: &str,
    joiner: &NodeProcess,
    role: &str,
) -> Result<(), BoxError> {
    let invite = inviter
        .post(
            &format!("/api/v1/workspaces/{ws}/invites"),
            &serde_json::json!({"peer_id": joiner.peer_id().await?, "role": role}),
        )
        .await?;
    joiner
        .post(
            "/api/v1/join",
            &serde_json::json!({"token": invite["token"]}),
        )
        .await?;
    Ok(())
}

/// A free TCP port on loopback.
pub fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A real `xencode node` process (the release binary), killed on drop.
pub struct NodeProcess {
    child: Child,
    pub url: String,
    pub home: PathBuf,
    pub http: reqwest::Client,
    auth: String,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeProcess {
    /// Stops the node in order (SIGTERM, as Ctrl-C or systemd would) and
    /// waits for it to exit: its sessions close and their sync states are
    /// kept. Dropping a `NodeProcess` kills it instead.
    pub fn stop(mut self) -> Result<(), BoxError> {
        std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts a node on data directory `home` with a free API port, mDNS
    /// off, and `extra` arguments to `node`; waits until it answers.
    pub fn start(home: &Path, extra: &[String]) -> Result<Self, BoxError> {
        Self::start_env(home, extra, &[])
    }

    /// [`Self::start`] with environment variables set for the node.
    pub fn start_env(
        home: &Path,
        extra: &[String],
        env: &[(&str, &str)],
    ) -> Result<Self, BoxError> {
        let _ = std::fs::remove_file(home.join("api-url"));
        // A node loads every document before it answers: minutes for a large
        // uncompacted store (issue 17).
        let child = Command::new(env!("CARGO_BIN_EXE_xencode"))
            .arg("--data-dir")
            .arg(home)
            .args(["node", "--api", "127.0.0.1:0", "--no-mdns"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("XENCODE_HOME")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let started = Instant::now();
        loop {
            if let Ok(url) = std::fs::read_to_string(home.join("api-url")) {
                let token = std::fs::read_to_string(home.join("api-token"))?;
                return Ok(Self {
                    child,
                    url: url.trim().to_owned(),
                    home: home.to_owned(),
                    http: reqwest::Client::builder().no_proxy().build()?,
                    auth: format!("Bearer {}", token.trim()),
                });
            }
            if started.elapsed() > Duration::from_secs(300) {
                return Err("the node did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A request to `path` (below the API URL) with the bearer token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("authorization", &self.auth)
    }

    /// `POST` JSON, expecting success and a JSON answer.
    pub async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, BoxError> {
        Ok(self
            .request(reqwest::Method::POST, path)
            .json(body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// `GET` JSON.
    pub async fn peer_id(&self) -> Result<String, BoxError> {
        Ok(self.get_json("/api/v1/node").await?["peer_id"]
            .as_str()
            .ok_or("no peer id")?
            .to_owned())
    }

    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value, BoxError> {
        Ok(self
            .request(reqwest::Method::GET, path)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// `PUT` a file's bytes.
    pub async fn put_file(&self, ws: &str, path: &str, body: Vec<u8>) -> Result<(), BoxError> {
        self.request(
            reqwest::Method::PUT,
            &format!("/api/v1/workspaces/{ws}/files/{path}"),
        )
        .body(body)
        .send()
        .await?
        .error_for_status()?;
        Ok(())
    }

    /// A file's bytes, `None` if it is not there (yet).
    pub async fn file(&self, ws: &str, path: &str) -> Result<Option<Vec<u8>>, BoxError> {
        let resp = self
            .request(
                reqwest::Method::GET,
                &format!("/api/v1/workspaces/{ws}/files/{path}"),
            )
            .send()
            .await?;
        if !resp.status().is_success() {
            return Ok(None);
        }
        Ok(Some(resp.bytes().await?.to_vec()))
    }

    /// One sample of `/metrics` (name with labels as exported); NaN if absent.
    pub async fn metric(&self, sample: &str) -> Result<f64, BoxError> {
        let text = self
            .request(reqwest::Method::GET, "/metrics")
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(f64::NAN))
    }
}
