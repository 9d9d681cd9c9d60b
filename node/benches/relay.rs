//! Sync over a relayed connection against a direct one (issue 19): real
//! release `xencode` nodes on loopback, in one run.
//!
//! - direct: A listens on loopback, B dials it;
//! - relayed: R runs `--relay` and listens; A and B listen on no address
//!   (as behind NATs) and reach each other only through R. R is a member of
//!   another workspace with both (what lets it relay for them) but not of
//!   the measured one, so everything measured crosses the circuit.
//!
//! Measured for both: single-edit propagation (one-character splices on A,
//! each timed until B's API serves it) and catch-up after 10,000 offline
//! changes; and the relay's CPU and memory for that one circuit.
//!
//! Run: `cargo bench -p xencode-node --bench relay`; writes the `relay`
//! section of `docs/benchmarks.md`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{
    BoxError, DirectPair, NodeProcess, cpu_secs, direct_pair, free_port, ms, percentiles, rss_mib,
    share, today,
};
use serde_json::json;

const EDITS: usize = 300;
const OFFLINE_CHANGES: usize = 10_000;
const WAIT: Duration = Duration::from_secs(600);
/// The environment of a node that listens on no address.
const UNLISTED: &[(&str, &str)] = &[("XENCODE_NETWORK_LISTEN", "")];

fn main() -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

struct Team {
    r: Option<NodeProcess>,
    a: NodeProcess,
    b: Option<NodeProcess>,
    b_home: PathBuf,
    b_args: Vec<String>,
    b_env: &'static [(&'static str, &'static str)],
    ws: String,
    _dir: tempfile::TempDir,
}

/// Waits until `node` lists a circuit address among its own.
async fn until_reserved(node: &NodeProcess) -> Result<(), BoxError> {
    let started = Instant::now();
    loop {
        let info = node.get_json("/api/v1/node").await?;
        let listen = info["listen"].as_array().cloned().unwrap_or_default();
        if listen
            .iter()
            .any(|a| a.as_str().is_some_and(|a| a.contains("/p2p-circuit/")))
        {
            return Ok(());
        }
        if started.elapsed() > WAIT {
            return Err("no reservation on the relay".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Team {
    async fn direct() -> Result<Self, BoxError> {
        let dir = tempfile::tempdir()?;
        let DirectPair {
            a,
            b,
            b_home,
            b_args,
        } = direct_pair(dir.path()).await?;
        let ws = share(&a, "bench", &[(&b, "developer")]).await?;
        Self::ready(Self {
            r: None,
            a,
            b: Some(b),
            b_home,
            b_args,
            b_env: &[],
            ws,
            _dir: dir,
        })
        .await
    }

    async fn relayed() -> Result<Self, BoxError> {
        let dir = tempfile::tempdir()?;
        let pr = free_port()?;
        let r = NodeProcess::start(
            &dir.path().join("r"),
            &[
                "--listen".into(),
                format!("/ip4/127.0.0.1/tcp/{pr}"),
                "--relay".into(),
            ],
        )?;
        let a = NodeProcess::start_env(&dir.path().join("a"), &[], UNLISTED)?;
        let b_home = dir.path().join("b");
        let b = NodeProcess::start_env(&b_home, &[], UNLISTED)?;
        share(&r, "team", &[(&a, "developer"), (&b, "developer")]).await?;
        until_reserved(&a).await?;
        until_reserved(&b).await?;
        let ws = share(&a, "bench", &[(&b, "developer")]).await?;
        let team = Self::ready(Self {
            r: Some(r),
            a,
            b: Some(b),
            b_home,
            b_args: Vec::new(),
            b_env: UNLISTED,
            ws,
            _dir: dir,
        })
        .await?;
        let b_id = team.b()?.peer_id().await?;
        let peers = team.a.get_json("/api/v1/peers").await?;
        let link = peers["peers"]
            .as_array()
            .and_then(|l| l.iter().find(|p| p["peer_id"] == b_id.as_str()).cloned())
            .unwrap_or_default();
        if link["connection"] != "relayed" {
            return Err(format!("A and B are not connected through R: {link}").into());
        }
        Ok(team)
    }

    async fn ready(team: Self) -> Result<Self, BoxError> {
        team.a
            .put_file(&team.ws, "ready.txt", b"ok".to_vec())
            .await?;
        team.until_b_has("ready.txt", b"ok").await?;
        Ok(team)
    }

    fn b(&self) -> Result<&NodeProcess, BoxError> {
        self.b.as_ref().ok_or_else(|| "B is stopped".into())
    }

    async fn until_b_has(&self, path: &str, want: &[u8]) -> Result<Duration, BoxError> {
        let every = Duration::from_millis(2);
        common::until_has(self.b()?, &self.ws, path, want, every, WAIT).await
    }

    async fn type_char(&self, path: &str, pos: usize, ch: char) -> Result<(), BoxError> {
        self.a
            .post(
                &format!("/api/v1/workspaces/{}/splice", self.ws),
                &json!({"path": path, "edits": [{"pos": pos, "delete": 0, "insert": ch.to_string()}]}),
            )
            .await?;
        Ok(())
    }
}

struct Figures {
    p50: Duration,
    p99: Duration,
    catch_up: Duration,
    /// The relay's CPU seconds and resident memory (MiB) before and after
    /// the catch-up, when there is a relay.
    relay: Option<(f64, f64, f64)>,
}

async fn measure(team: &mut Team) -> Result<Figures, BoxError> {
    team.a.put_file(&team.ws, "typing.txt", Vec::new()).await?;
    team.until_b_has("typing.txt", b"").await?;
    let mut visible = Vec::with_capacity(EDITS);
    let mut text = Vec::new();
    for i in 0..EDITS {
        let ch = char::from(b'a' + (i % 26) as u8);
        text.push(ch as u8);
        let t = Instant::now();
        team.type_char("typing.txt", i, ch).await?;
        let b = team.b()?;
        while b.file(&team.ws, "typing.txt").await?.as_deref() != Some(&text[..]) {
            if t.elapsed() > WAIT {
                return Err("an edit never reached B".into());
            }
        }
        visible.push(t.elapsed());
    }
    let (p50, p99) = percentiles(&mut visible);

    team.a.put_file(&team.ws, "catchup.txt", Vec::new()).await?;
    team.until_b_has("catchup.txt", b"").await?;
    team.b = None;
    let mut want = Vec::new();
    for i in 0..OFFLINE_CHANGES {
        let ch = char::from(b'a' + (i % 26) as u8);
        want.push(ch as u8);
        team.type_char("catchup.txt", i, ch).await?;
    }
    let relay_before = team
        .r
        .as_ref()
        .map(|r| (cpu_secs(r.pid()), rss_mib(r.pid(), "VmRSS:")));
    let started = Instant::now();
    team.b = Some(NodeProcess::start_env(
        &team.b_home,
        &team.b_args,
        team.b_env,
    )?);
    team.until_b_has("catchup.txt", &want).await?;
    let catch_up = started.elapsed();
    let relay = match (team.r.as_ref(), relay_before) {
        (Some(r), Some((cpu, rss))) => {
            Some((cpu_secs(r.pid()) - cpu, rss, rss_mib(r.pid(), "VmRSS:")))
        }
        _ => None,
    };
    Ok(Figures {
        p50,
        p99,
        catch_up,
        relay,
    })
}

async fn run() -> Result<(), BoxError> {
    let direct = measure(&mut Team::direct().await?).await?;
    println!(
        "direct: p50 {:?} p99 {:?}, catch-up {:?}",
        direct.p50, direct.p99, direct.catch_up
    );
    let relayed = measure(&mut Team::relayed().await?).await?;
    println!(
        "relayed: p50 {:?} p99 {:?}, catch-up {:?}, relay {:?}",
        relayed.p50, relayed.p99, relayed.catch_up, relayed.relay
    );
    let (cpu, rss_idle, rss_after) = relayed.relay.ok_or("no relay figures")?;
    let report = format!(
        "### Sync through a member's relay (issue 19)\n\n\
         Measured {} with `cargo bench -p xencode-node --bench relay` (release binaries, \
         loopback, 2 cores). Relayed: A and B listen on no address and reach each other only \
         through R (`--relay`), a member of another workspace with both but not of the measured \
         one, so all of it crosses the circuit (noise and yamux end to end inside it). Direct: \
         B dials A.\n\n\
         | what | direct | relayed | ratio |\n|---|---|---|---|\n\
         | one-character splice on A → B serves it: p50 | {:.2} ms | {:.2} ms | {:.2}x |\n\
         | the same: p99 | {:.2} ms | {:.2} ms | {:.2}x |\n\
         | catch-up after {OFFLINE_CHANGES} offline changes: B from start until it serves the text | {:.2} s | {:.2} s | {:.2}x |\n\n\
         The relay during that catch-up (one circuit): {cpu:.2} s of CPU; resident memory \
         {rss_idle:.1} MiB before, {rss_after:.1} MiB after. ({EDITS} splices for the \
         percentiles.) On loopback the relay adds a hop through one more process, not \
         a network's round trip; behind real NATs DCUtR replaces the circuit with a direct \
         connection where the NATs allow (`tests/tests/nat.rs`). The first run (2026-12-04), \
         before a node dialled the peers it reaches through a relay as soon as it connected to \
         the relay, gave a relayed catch-up of 1.53 s against 0.59 s direct (2.6x): B's wait for \
         its next redial.\n",
        today(),
        ms(direct.p50),
        ms(relayed.p50),
        ms(relayed.p50) / ms(direct.p50),
        ms(direct.p99),
        ms(relayed.p99),
        ms(relayed.p99) / ms(direct.p99),
        direct.catch_up.as_secs_f64(),
        relayed.catch_up.as_secs_f64(),
        relayed.catch_up.as_secs_f64() / direct.catch_up.as_secs_f64(),
    );
    common::write_report("relay", &report)
}
