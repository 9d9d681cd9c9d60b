//! Restart of a node whose documents are still change records (issue 17,
//! item 4): the issue's own case, 734 files written moments before the stop
//! and never compacted, against the same store after compaction. Each start
//! is timed from spawning `xencode node` until its API lists all 734 files,
//! and its peak RSS read from /proc (`VmHWM`).
//!
//! `cargo bench -p xencode-tests --bench restart` writes the `restart`
//! section of `docs/benchmarks.md`.

#[path = "../../analysis/benches/report.rs"]
mod report;

use std::path::Path;
use std::time::Instant;

use report::{BoxError, today, write_report};
use xencode_tests::{Node, put, uncompacted_modules};

const FILES: usize = 734;
const EDITED: usize = 10;
const SPLICES: usize = 10;

fn main() -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

fn config(home: &Path, compact_after: u64) -> Result<(), BoxError> {
    std::fs::write(
        home.join("config.toml"),
        format!(
            "[store]\ncompact_after_changes = {compact_after}\ncompact_interval_secs = 86400\n"
        ),
    )?;
    Ok(())
}

/// Starts the node on `home`: seconds until it lists every file, peak RSS
/// in MiB.
async fn timed_start(home: &Path, ws: &str) -> Result<(f64, f64, Node), BoxError> {
    let started = Instant::now();
    let node = Node::start(home)?;
    while node.files(ws).await.len() < FILES {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let (peak_kib, _) = node.memory_kib();
    Ok((secs, peak_kib as f64 / 1024.0, node))
}

async fn run() -> Result<(), BoxError> {
    let tmp = tempfile::tempdir()?;
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home)?;
    // Records stay records: a threshold this burst never reaches.
    config(&home, 1_000_000)?;
    let node = Node::start(&home)?;
    let ws = uncompacted_modules(&node, tmp.path(), FILES, EDITED, SPLICES).await?;
    node.stop();

    let (records_s, records_mib, node) = timed_start(&home, &ws).await?;
    node.stop();
    println!("from change records: {records_s:.2} s, peak {records_mib:.0} MiB");

    // Compacted: the next write folds every document into a snapshot.
    config(&home, 1)?;
    let node = Node::start(&home)?;
    if !put(&node, &ws, "compact-now.txt", "x").await.is_success() {
        return Err("the write that compacts failed".into());
    }
    node.stop();
    config(&home, 1_000_000)?;
    let (snap_s, snap_mib, node) = timed_start(&home, &ws).await?;
    node.stop();
    println!("from snapshots: {snap_s:.2} s, peak {snap_mib:.0} MiB");

    let section = format!(
        "Measured {} on this project's CI machine kind (2 cores), release build, one run.\n\n\
         ### Restart of a store not yet compacted (issue 17)\n\n\
         The issue's case: {FILES} Python modules of 60 lines shared as a folder, {EDITED} of them then \
         edited {SPLICES} times each, the node stopped before it folded any change record into a \
         snapshot (`compact_after_changes` set out of reach). Each start is timed from spawning \
         `xencode node` until its API lists all {FILES} files; peak RSS is `VmHWM` from /proc.\n\n\
         | start | ready | peak RSS | before issue 17 (the issue's report) |\n|---|---|---|---|\n\
         | from change records (not compacted) | {records_s:.2} s | {records_mib:.0} MiB | 19 s, 2.78 GB |\n\
         | from snapshots (the same store compacted): the baseline | {snap_s:.2} s | {snap_mib:.0} MiB | 6 s, 74 MB |\n\n\
         **Ratio records / snapshots: time {:.2}x, memory {:.2}x** (aim: ≤ 3 s and ≤ 300 MB; never more \
         than 2x the compacted memory, which `tests/tests/durability.rs` also asserts).\n\n",
        today(),
        records_s / snap_s,
        records_mib / snap_mib,
    );
    write_report("restart", &section)?;
    Ok(())
}
