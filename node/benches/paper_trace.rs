//! Replays the automerge-paper editing trace (259,778 single-character edits)
//! into one file through a real node (HTTP splices in batches, each batch one
//! durable commit) and, in the same run, into a bare in-process Automerge
//! document with the same batching. Writes the figures into
//! `docs/benchmarks.md` between the `paper-trace` markers.
//!
//! Run: `cargo bench -p xencode-node --bench paper_trace`. Needs
//! `../shared/data/editing-traces/automerge-paper.json.gz` beside the repo;
//! without it the benchmark says so and does nothing.

mod common;

use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
use common::{BoxError, Edit, NodeProcess, ms, percentiles, today};
use serde_json::json;

const BATCH: usize = 100;
const PER_EDIT_SAMPLE: usize = 5_000;

fn main() -> Result<(), BoxError> {
    let Some((edits, end_content)) = common::paper_trace()? else {
        return Ok(());
    };
    println!(
        "trace: {} edits, final text {} chars",
        edits.len(),
        end_content.chars().count()
    );

    let (bare_batched, batched_changes) = bare(&edits, BATCH, &end_content)?;
    let (bare_per_edit, per_edit_changes) = bare(&edits, 1, &end_content)?;
    let (bare_extract, _) = bare_with(&edits, BATCH, &end_content, true)?;
    println!("bare automerge, {BATCH} edits/commit + change bytes: {bare_extract:?}");
    println!("bare automerge, {BATCH} edits/commit: {bare_batched:?} ({batched_changes} changes)");
    println!("bare automerge, 1 edit/commit: {bare_per_edit:?} ({per_edit_changes} changes)");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let node = rt.block_on(through_node(&edits, &end_content))?;
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
    let others = rt.block_on(other_traces())?;

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
    common::write_report("paper-trace", &format!("{report}{others}"))
}

/// The other real editing traces, when present: through the node and bare
/// Automerge at the same batching, one row each.
async fn other_traces() -> Result<String, BoxError> {
    let mut rows = String::new();
    let mut absent = Vec::new();
    for (file, what) in [
        ("seph-blog1.json.gz", "a blog post (\"CRDTs go brrr\")"),
        (
            "friendsforever_flat.json.gz",
            "two users' story, linearised",
        ),
    ] {
        let Some((edits, end)) = common::trace(file)? else {
            absent.push(file);
            continue;
        };
        let (bare_t, commits) = bare(&edits, BATCH, &end)?;
        let node = through_node(&edits, &end).await?;
        let ratio = node.total.as_secs_f64() / bare_t.as_secs_f64();
        println!(
            "{file}: node {:?}, bare {bare_t:?}: {ratio:.2}x",
            node.total
        );
        rows.push_str(&format!(
            "| `{file}`: {what}, {} edits | {:.2} s | {:.2} s ({commits} commits) | {ratio:.2}x |\n",
            edits.len(),
            node.total.as_secs_f64(),
            bare_t.as_secs_f64(),
        ));
    }
    let mut out = String::new();
    if !rows.is_empty() {
        out.push_str(&format!(
            "\nOther real editing traces, the same way ({BATCH} edits per request or commit):\n\n\
             | trace | through the node | bare Automerge | ratio |\n|---|---|---|---|\n{rows}"
        ));
    }
    if !absent.is_empty() {
        out.push_str(&format!(
            "\nNot measured, absent from `../shared/data/editing-traces/`: {}.\n",
            absent.join(", ")
        ));
    }
    Ok(out)
}

/// Replays into a bare AutoCommit, committing every `batch` edits.
fn bare(edits: &[Edit], batch: usize, expected: &str) -> Result<(Duration, usize), BoxError> {
    bare_with(edits, batch, expected, false)
}

/// Like [`bare`]; with `extract`, also takes each commit's change out as
/// compressed bytes, the part of persisting that Automerge itself does.
fn bare_with(
    edits: &[Edit],
    batch: usize,
    expected: &str,
    extract: bool,
) -> Result<(Duration, usize), BoxError> {
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

async fn through_node(edits: &[Edit], expected: &str) -> Result<NodeRun, BoxError> {
    let dir = tempfile::tempdir()?;
    let node = NodeProcess::start(&dir.path().join("home"), &[])?;
    let http = node.http.clone();
    let auth = format!(
        "Bearer {}",
        std::fs::read_to_string(node.home.join("api-token"))?.trim()
    );
    let ws = node
        .post("/api/v1/workspaces", &json!({"name": "bench"}))
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
    let commit_mean_ms = 1e3
        * node
            .metric("xencode_store_commit_duration_seconds_sum{outcome=\"ok\"}")
            .await?
        / node
            .metric("xencode_store_commit_duration_seconds_count{outcome=\"ok\"}")
            .await?;
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
