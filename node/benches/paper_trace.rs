//! Replays the automerge-paper editing trace (259,778 single-character edits)
//! into one file through a real node (HTTP splices in batches, each batch one
//! durable commit) and, in the same run, into a bare in-process Automerge
//! document with the same batching. Writes the figures into
//! `docs/benchmarks.md` between the `paper-trace` markers.
//!
//! Run: `cargo bench -p xencode-node --bench paper_trace`. Needs
//! `../shared/data/editing-traces/automerge-paper.json.gz` beside the repo;
//! without it the benchmark says so and does nothing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
use serde::Deserialize;
use serde_json::json;

const BATCH: usize = 100;
const PER_EDIT_SAMPLE: usize = 5_000;

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

type Edit = (usize, usize, String);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no repo root")?
        .to_path_buf();
    let trace_path = root.join("../shared/data/editing-traces/automerge-paper.json.gz");
    if !trace_path.exists() {
        println!(
            "SKIP: {} is absent; the paper-trace benchmark needs it",
            trace_path.display()
        );
        return Ok(());
    }
    let mut json = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&trace_path)?).read_to_string(&mut json)?;
    let trace: Trace = serde_json::from_str(&json)?;
    let edits: Vec<Edit> = trace.txns.into_iter().flat_map(|t| t.patches).collect();
    println!(
        "trace: {} edits, final text {} chars",
        edits.len(),
        trace.end_content.chars().count()
    );

    let (bare_batched, batched_changes) = bare(&edits, BATCH, &trace.end_content)?;
    let (bare_per_edit, per_edit_changes) = bare(&edits, 1, &trace.end_content)?;
    let (bare_extract, _) = bare_with(&edits, BATCH, &trace.end_content, true)?;
    println!("bare automerge, {BATCH} edits/commit + change bytes: {bare_extract:?}");
    println!("bare automerge, {BATCH} edits/commit: {bare_batched:?} ({batched_changes} changes)");
    println!("bare automerge, 1 edit/commit: {bare_per_edit:?} ({per_edit_changes} changes)");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let node = rt.block_on(through_node(&edits, &trace.end_content))?;
    println!(
        "node, {BATCH} edits/request: {:?}; request p50 {:?} p99 {:?}; commit mean {:.3} ms",
        node.total, node.batch_p50, node.batch_p99, node.commit_mean_ms
    );
    println!(
        "node, 1 edit/request (first {PER_EDIT_SAMPLE} edits): p50 {:?} p99 {:?}",
        node.single_p50, node.single_p99
    );
    let ratio = node.total.as_secs_f64() / bare_batched.as_secs_f64();
    println!("ratio node / bare automerge (same batching): {ratio:.2}x");

    let report = format!(
        "Measured {date} on this project's CI machine kind (2 cores), release build, one run.\n\n\
         | what | batching | time | per commit |\n|---|---|---|---|\n\
         | bare Automerge, in process | {BATCH} edits per commit ({batched_changes} commits) | {bb:.2} s | {bbc:.0} µs |\n\
         | bare Automerge, in process, plus taking each change out as bytes | {BATCH} edits per commit | {bx:.2} s | {bxc:.0} µs |\n\
         | bare Automerge, in process | 1 edit per commit ({per_edit_changes} commits) | {bpe:.2} s | {bpec:.1} µs |\n\
         | xencode node over HTTP, durable (fsync) commits | {BATCH} edits per request ({reqs} requests) | {nt:.2} s | {npc:.0} µs |\n\n\
         **Ratio node / bare Automerge at the same batching: {ratio:.2}x.**\n\n\
         Durable write latency seen by the client (each acknowledged request is one redb commit with `Durability::Immediate`):\n\n\
         | request | p50 | p99 |\n|---|---|---|\n\
         | {BATCH}-edit batch | {b50:.2} ms | {b99:.2} ms |\n\
         | single edit (first {PER_EDIT_SAMPLE} edits of the trace) | {s50:.2} ms | {s99:.2} ms |\n\n\
         Server-side redb commit time (mean of `xencode_store_commit_duration_seconds`): {cm:.3} ms. \
         Compaction ran as configured by default (a snapshot every 1000 change records per document).\n",
        date = today(),
        bb = bare_batched.as_secs_f64(),
        bbc = bare_batched.as_secs_f64() * 1e6 / batched_changes as f64,
        bpe = bare_per_edit.as_secs_f64(),
        bx = bare_extract.as_secs_f64(),
        bxc = bare_extract.as_secs_f64() * 1e6 / batched_changes as f64,
        bpec = bare_per_edit.as_secs_f64() * 1e6 / per_edit_changes as f64,
        reqs = node.requests,
        nt = node.total.as_secs_f64(),
        npc = node.total.as_secs_f64() * 1e6 / node.requests as f64,
        b50 = ms(node.batch_p50),
        b99 = ms(node.batch_p99),
        s50 = ms(node.single_p50),
        s99 = ms(node.single_p99),
        cm = node.commit_mean_ms,
    );
    write_report(&root.join("docs/benchmarks.md"), &report)?;
    println!("wrote docs/benchmarks.md");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "today".into(), |s| s.trim().to_owned())
}

/// Replays into a bare AutoCommit, committing every `batch` edits.
fn bare(
    edits: &[Edit],
    batch: usize,
    expected: &str,
) -> Result<(Duration, usize), Box<dyn std::error::Error>> {
    bare_with(edits, batch, expected, false)
}

/// Like [`bare`]; with `extract`, also takes each commit's change out as
/// compressed bytes, the part of persisting that Automerge itself does.
fn bare_with(
    edits: &[Edit],
    batch: usize,
    expected: &str,
    extract: bool,
) -> Result<(Duration, usize), Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut doc = AutoCommit::new();
    let text = doc.put_object(ROOT, "text", ObjType::Text)?;
    doc.commit();
    let mut commits = 0;
    for chunk in edits.chunks(batch) {
        for (pos, del, ins) in chunk {
            doc.splice_text(&text, *pos, *del as isize, ins)?;
        }
        doc.commit();
        if extract {
            let mut change = doc.get_last_local_change().ok_or("no change")?;
            std::hint::black_box(change.bytes().len());
        }
        commits += 1;
    }
    let elapsed = started.elapsed();
    if doc.text(&text)? != expected {
        return Err("bare replay produced the wrong text".into());
    }
    Ok((elapsed, commits))
}

struct NodeRun {
    total: Duration,
    requests: usize,
    batch_p50: Duration,
    batch_p99: Duration,
    single_p50: Duration,
    single_p99: Duration,
    commit_mean_ms: f64,
}

struct NodeProcess {
    child: Child,
    url: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node() -> Result<NodeProcess, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let home: PathBuf = dir.path().join("home");
    let child = Command::new(env!("CARGO_BIN_EXE_xencode"))
        .arg("--data-dir")
        .arg(&home)
        .args(["node", "--api", "127.0.0.1:0", "--no-mdns"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let started = Instant::now();
    loop {
        if let Ok(url) = std::fs::read_to_string(home.join("api-url")) {
            let token = std::fs::read_to_string(home.join("api-token"))?;
            return Ok(NodeProcess {
                child,
                url: url.trim().to_owned(),
                token: token.trim().to_owned(),
                _dir: dir,
            });
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("the node did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn through_node(
    edits: &[Edit],
    expected: &str,
) -> Result<NodeRun, Box<dyn std::error::Error>> {
    let node = start_node()?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    let auth = format!("Bearer {}", node.token);
    let ws: serde_json::Value = http
        .post(format!("{}/api/v1/workspaces", node.url))
        .header("authorization", &auth)
        .json(&json!({"name": "bench"}))
        .send()
        .await?
        .json()
        .await?;
    let ws = ws["id"].as_str().ok_or("no workspace id")?.to_owned();
    let file = format!("{}/api/v1/workspaces/{ws}/files/paper.tex", node.url);
    let splice = format!("{}/api/v1/workspaces/{ws}/splice", node.url);
    http.put(&file)
        .header("authorization", &auth)
        .body("")
        .send()
        .await?
        .error_for_status()?;

    let mut latencies = Vec::new();
    let started = Instant::now();
    for chunk in edits.chunks(BATCH) {
        let body = json!({
            "path": "paper.tex",
            "edits": chunk.iter().map(|(p, d, i)| json!({"pos": p, "delete": d, "insert": i})).collect::<Vec<_>>(),
        });
        let t = Instant::now();
        http.post(&splice)
            .header("authorization", &auth)
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        latencies.push(t.elapsed());
    }
    let total = started.elapsed();
    let got = http
        .get(&file)
        .header("authorization", &auth)
        .send()
        .await?
        .text()
        .await?;
    if got != expected {
        return Err("the node's replay produced the wrong text".into());
    }
    let metrics = http
        .get(format!("{}/metrics", node.url))
        .header("authorization", &auth)
        .send()
        .await?
        .text()
        .await?;
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };
    let commit_mean_ms = 1e3 * metric("xencode_store_commit_duration_seconds_sum{outcome=\"ok\"}")
        / metric("xencode_store_commit_duration_seconds_count{outcome=\"ok\"}");
    let requests = latencies.len();
    let (batch_p50, batch_p99) = percentiles(&mut latencies);

    // Interactive typing: one edit per request on a fresh file.
    let single_file = format!("{}/api/v1/workspaces/{ws}/files/typing.tex", node.url);
    http.put(&single_file)
        .header("authorization", &auth)
        .body("")
        .send()
        .await?
        .error_for_status()?;
    let mut singles = Vec::new();
    for (p, d, i) in edits.iter().take(PER_EDIT_SAMPLE) {
        let body = json!({"path": "typing.tex", "pos": p, "delete": d, "insert": i});
        let t = Instant::now();
        http.post(&splice)
            .header("authorization", &auth)
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        singles.push(t.elapsed());
    }
    let (single_p50, single_p99) = percentiles(&mut singles);
    Ok(NodeRun {
        total,
        requests,
        batch_p50,
        batch_p99,
        single_p50,
        single_p99,
        commit_mean_ms,
    })
}

fn percentiles(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99))
}

/// Replaces the text between the paper-trace markers (or appends them).
fn write_report(path: &Path, section: &str) -> std::io::Result<()> {
    const START: &str = "<!-- paper-trace:start -->";
    const END: &str = "<!-- paper-trace:end -->";
    let old = std::fs::read_to_string(path).unwrap_or_else(|_| "# Benchmarks\n\n".into());
    let block = format!("{START}\n{section}{END}");
    let new = match (old.find(START), old.find(END)) {
        (Some(s), Some(e)) if e > s => format!("{}{block}{}", &old[..s], &old[e + END.len()..]),
        _ => format!("{old}\n{block}\n"),
    };
    std::fs::write(path, new)
}
