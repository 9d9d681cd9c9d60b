//! Sync behind NAT routers (issue 19): a relayed connection against a
//! hole-punched direct one, in the same namespace topology as
//! `tests/tests/nat.rs` — R in a "public" namespace runs `--relay`; A and
//! B sit in two homes, each behind its own router (nftables masquerade).
//!
//! - hole-punched: the routers map a home port to one public port
//!   (endpoint-independent), so DCUtR turns A–B into a direct connection;
//! - relayed: the routers give every connection a random port (a symmetric
//!   NAT), so A–B stays a circuit through R.
//!
//! The measured workspace is A's and B's only (R is a member of another one
//! with both, which is what lets it relay for them), so everything measured
//! crosses the A–B connection. Measured for both: single-edit propagation
//! (a one-character splice on A, timed until B's API serves it) and the
//! catch-up of 10,000 changes B missed while stopped; and R's CPU time and
//! memory over the relayed catch-up, per circuit.
//!
//! The nodes' APIs listen on their namespaces' loopback: this benchmark
//! runs a copy of itself inside each namespace (`--api-helper`) that makes
//! the requests, so no process starts per request.
//!
//! `cargo bench -p xencode-tests --bench nat_relay` (as root, with `ip` and
//! `nft`) writes the `nat_relay` section of `docs/benchmarks.md`; elsewhere
//! it says why and skips.

#[path = "../../analysis/benches/report.rs"]
mod report;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use report::{BoxError, cpu_secs, ms, percentiles, rss_mib, today, write_report};
use serde_json::json;
use xencode_tests::last_line;
use xencode_tests::netns::{Internet, Nat, NsNode, connection, is_root, start_in, team};

const EDITS: usize = 200;
const OFFLINE_CHANGES: usize = 10_000;
const WAIT: Duration = Duration::from_secs(300);

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--api-helper") {
        return helper(&args[2], &args[3]);
    }
    if !is_root() {
        println!("SKIP: network namespaces need root");
        return Ok(());
    }
    let punched = measure(Nat::EndpointIndependent, "hole-punched")?;
    println!("hole-punched: {punched:?}");
    let relayed = measure(Nat::Symmetric, "relayed")?;
    println!("relayed: {relayed:?}");
    let (cpu, rss_before, rss_after, circuits) = relayed.relay;
    let per = circuits.max(1.0);
    let report = format!(
        "### Behind NAT routers: relayed against hole-punched (issue 19)\n\n\
         Measured {} with `cargo bench -p xencode-tests --bench nat_relay` (release \
         binaries, 2 cores), in the namespace topology of `tests/tests/nat.rs`: R in a \
         public namespace runs `--relay`, A and B are each behind their own NAT router \
         (nftables masquerade) and dialled by nobody. Hole-punched: the routers keep a \
         home port's public port, and DCUtR made A–B direct. Relayed: the routers pick a \
         random port per connection (a symmetric NAT), so A–B stays a circuit through R. \
         The measured workspace is A's and B's only, so all of it crosses the A–B \
         connection (noise and yamux end to end inside the circuit).\n\n\
         | what | hole-punched | relayed | ratio |\n|---|---|---|---|\n\
         | one-character splice on A → B serves it: p50 | {:.2} ms | {:.2} ms | {:.2}x |\n\
         | the same: p99 | {:.2} ms | {:.2} ms | {:.2}x |\n\
         | catch-up after {OFFLINE_CHANGES} changes B missed: from B's start until it serves the text | {:.2} s | {:.2} s | {:.2}x |\n\n\
         R over the relayed catch-up: {cpu:.2} s of CPU (`/proc` counts it in 10 ms ticks) \
         and resident memory {rss_before:.1} → {rss_after:.1} MiB, with {circuits} circuits \
         open (A and B each dialled the other through R): per circuit {:.3} s of CPU and \
         {:.2} MiB. ({EDITS} splices for the percentiles; the veth links add no delay, so \
         the relayed path's cost is R's hop, not a wide-area round trip.)\n",
        today(),
        ms(punched.p50),
        ms(relayed.p50),
        ms(relayed.p50) / ms(punched.p50),
        ms(punched.p99),
        ms(relayed.p99),
        ms(relayed.p99) / ms(punched.p99),
        punched.catch_up.as_secs_f64(),
        relayed.catch_up.as_secs_f64(),
        relayed.catch_up.as_secs_f64() / punched.catch_up.as_secs_f64(),
        cpu / per,
        (rss_after - rss_before).max(0.0) / per,
    );
    write_report("nat_relay", &report)
}

#[derive(Debug)]
struct Figures {
    p50: Duration,
    p99: Duration,
    catch_up: Duration,
    /// R's CPU seconds, RSS before and after (MiB), circuits open.
    relay: (f64, f64, f64, f64),
}

fn measure(nat: Nat, kind: &str) -> Result<Figures, BoxError> {
    let net = Internet::new(nat)?;
    let tmp = tempfile::tempdir()?;
    let (r, a, b, _) = team(&net, tmp.path());
    let a_id = last_line(&a.cli(&["id"]));
    let b_id = last_line(&b.cli(&["id"]));
    let ws = last_line(&a.cli(&["workspace", "create", "measured"]));
    let invite = last_line(&a.cli(&["invite", &ws, &b_id, "--role", "developer"]));
    if last_line(&b.cli(&["join", &invite])) != ws {
        return Err(format!("B could not join:\n{}", b.log()).into());
    }
    let started = Instant::now();
    while connection(&b, &a_id) != kind || connection(&a, &b_id) != kind {
        if started.elapsed() > WAIT {
            return Err(format!(
                "A–B never became {kind} (B: {}, A: {})",
                connection(&b, &a_id),
                connection(&a, &b_id)
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut api_a = Api::open(&a)?;
    let mut api_b = Api::open(&b)?;
    let mut api_r = Api::open(&r)?;
    let file = |ws: &str, path: &str| format!("/api/v1/workspaces/{ws}/files/{path}");
    put(&a, &ws, "typing.txt")?;
    until(&mut api_b, &file(&ws, "typing.txt"), "")?;

    let mut text = String::new();
    let mut visible = Vec::with_capacity(EDITS);
    for i in 0..EDITS {
        let t = Instant::now();
        splice(&mut api_a, &ws, "typing.txt", i, &mut text)?;
        until(&mut api_b, &file(&ws, "typing.txt"), &text)?;
        visible.push(t.elapsed());
    }
    let (p50, p99) = percentiles(&mut visible);

    put(&a, &ws, "catchup.txt")?;
    until(&mut api_b, &file(&ws, "catchup.txt"), "")?;
    let b_dir = b.dir.clone();
    drop(api_b);
    drop(b);
    let mut want = String::new();
    for i in 0..OFFLINE_CHANGES {
        splice(&mut api_a, &ws, "catchup.txt", i, &mut want)?;
    }
    let before = (cpu_secs(r.pid()), rss_mib(r.pid(), "VmRSS:"));
    let started = Instant::now();
    let b = start_in(net.home(1), &b_dir, false);
    let mut api_b = Api::open(&b)?;
    until(&mut api_b, &file(&ws, "catchup.txt"), &want)?;
    let catch_up = started.elapsed();
    let circuits = metric(&mut api_r, "xencode_relay_circuits")?;
    let relay = (
        cpu_secs(r.pid()) - before.0,
        before.1,
        rss_mib(r.pid(), "VmRSS:"),
        circuits,
    );
    drop((a, b, r, net));
    Ok(Figures {
        p50,
        p99,
        catch_up,
        relay,
    })
}

/// An empty file at `path`, written with the CLI (not timed).
fn put(node: &NsNode, ws: &str, path: &str) -> Result<(), BoxError> {
    let out = node.cli_with_stdin(&["file", "put", ws, path], b"");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned().into())
    }
}

/// Types one more letter at the end of `text`, on the node behind `api`.
fn splice(
    api: &mut Api,
    ws: &str,
    path: &str,
    i: usize,
    text: &mut String,
) -> Result<(), BoxError> {
    let ch = char::from(b'a' + (i % 26) as u8);
    let (status, body) = api.ask(
        "POST",
        &format!("/api/v1/workspaces/{ws}/splice"),
        &json!({"path": path, "edits": [{"pos": text.len(), "delete": 0, "insert": ch.to_string()}]}),
    )?;
    if status != 200 {
        return Err(format!("splice: {status} {body}").into());
    }
    text.push(ch);
    Ok(())
}

/// Polls `path` until it serves `want`.
fn until(api: &mut Api, path: &str, want: &str) -> Result<(), BoxError> {
    let started = Instant::now();
    loop {
        let (status, body) = api.ask("GET", path, &serde_json::Value::Null)?;
        if status == 200 && body == want {
            return Ok(());
        }
        if started.elapsed() > WAIT {
            return Err(format!("{path} never served what was written").into());
        }
    }
}

/// One sample of `/metrics`.
fn metric(api: &mut Api, name: &str) -> Result<f64, BoxError> {
    let (_, body) = api.ask("GET", "/metrics", &serde_json::Value::Null)?;
    Ok(body
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(f64::NAN))
}

/// A node's API through a helper process inside its namespace: one line
/// out per request, one line back per answer.
struct Api {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Api {
    fn open(node: &NsNode) -> Result<Self, BoxError> {
        let url = std::fs::read_to_string(node.dir.join("api-url"))?;
        let token = std::fs::read_to_string(node.dir.join("api-token"))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node.ns])
            .arg(std::env::current_exe()?)
            .args(["--api-helper", url.trim(), token.trim()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let to = child.stdin.take().ok_or("no helper stdin")?;
        let from = BufReader::new(child.stdout.take().ok_or("no helper stdout")?);
        Ok(Self { child, to, from })
    }

    fn ask(
        &mut self,
        method: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<(u16, String), BoxError> {
        let line = json!({"method": method, "path": path, "body": body});
        writeln!(self.to, "{line}")?;
        self.to.flush()?;
        let mut answer = String::new();
        if self.from.read_line(&mut answer)? == 0 {
            return Err("the API helper ended".into());
        }
        let answer: serde_json::Value = serde_json::from_str(&answer)?;
        Ok((
            answer["status"].as_u64().unwrap_or(0) as u16,
            answer["body"].as_str().unwrap_or_default().to_owned(),
        ))
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The helper: requests from stdin, answers on stdout.
fn helper(url: &str, token: &str) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let req: serde_json::Value = serde_json::from_str(&line?)?;
        let method = req["method"].as_str().unwrap_or("GET");
        let path = req["path"].as_str().unwrap_or("/");
        let answer = rt.block_on(async {
            let mut r = client
                .request(method.parse()?, format!("{url}{path}"))
                .bearer_auth(token);
            if !req["body"].is_null() {
                r = r.json(&req["body"]);
            }
            let resp = r.send().await?;
            let status = resp.status().as_u16();
            let body = resp.text().await?;
            Ok::<_, BoxError>(json!({"status": status, "body": body}))
        });
        let answer = answer.unwrap_or_else(|e| json!({"status": 0, "body": e.to_string()}));
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}
