//! Importing a real Automerge document with its history (`xencode file
//! import`): the automerge-perf paper document (259,779 changes, one per
//! keystroke, by one actor), read and replayed as the importer's changes, and
//! the whole import through a real node. Baseline in the same run: bare
//! Automerge loading the same document. Writes the `automerge-import`
//! section of `docs/benchmarks.md`.
//!
//! Run: `cargo bench -p xencode-node --bench interop`. Needs
//! `../shared/data/editing-traces/automerge-perf-text-doc.amrg`; without it
//! the benchmark says so and does nothing.

mod common;

use std::time::Instant;

use automerge::{AutoCommit, ReadDoc};
use common::{BoxError, NodeProcess, repo_root, today, write_report};
use xencode_node::workspace::interop::{ImportLimits, read};

fn main() -> Result<(), BoxError> {
    let path = repo_root()?.join("../shared/data/editing-traces/automerge-perf-text-doc.amrg");
    let Ok(bytes) = std::fs::read(&path) else {
        println!(
            "SKIP: {} is absent; this benchmark needs it",
            path.display()
        );
        return Ok(());
    };

    let t = Instant::now();
    let mut bare = AutoCommit::load(&bytes)?;
    let changes = bare.get_changes(&[]).len();
    let text_len = bare
        .get(automerge::ROOT, "text")?
        .map(|(_, id)| bare.length(&id))
        .unwrap_or(0);
    let bare_load = t.elapsed();
    println!("bare load + get_changes: {bare_load:?} ({changes} changes, {text_len} chars)");

    let t = Instant::now();
    let foreign = read(&bytes, "text", ImportLimits::for_text(64 << 20))?;
    let read_time = t.elapsed();
    println!(
        "read: {read_time:?} ({} versions, {} chars)",
        foreign.versions.len(),
        foreign.text.chars().count()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tmp = tempfile::tempdir()?;
    let home = tmp.path().join("node");
    let (through_node, rss) = rt.block_on(async {
        let node = NodeProcess::start(&home, &[])?;
        let ws = node
            .post("/api/v1/workspaces", &serde_json::json!({"name": "import"}))
            .await?;
        let ws = ws["id"].as_str().ok_or("no workspace id")?.to_owned();
        let t = Instant::now();
        let resp = node
            .request(
                reqwest::Method::PUT,
                &format!("/api/v1/workspaces/{ws}/automerge/paper.txt"),
            )
            .body(bytes.clone())
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(format!("import failed: {}", resp.text().await?).into());
        }
        let took = t.elapsed();
        let got = node.file(&ws, "paper.txt").await?.unwrap_or_default();
        if got != foreign.text.as_bytes() {
            return Err("the imported file differs from the document's text".into());
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", node.pid()))?;
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0;
        Ok::<_, BoxError>((took, hwm))
    })?;
    println!("through the node: {through_node:?}, peak RSS {rss:.0} MiB");

    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let section = format!(
        "### Importing an Automerge document with its history (`file import`)\n\n\
         The automerge-perf paper document (`text-doc.amrg`, {} KB, {changes} changes by one \
         actor, {text_len} characters), measured {}.\n\n\
         | work | time | ratio to bare load |\n|---|---|---|\n\
         | bare Automerge: `load` + `get_changes` (baseline) | {:.0} ms | 1.0× |\n\
         | `interop::read`: check, load, replay into {} versions | {:.0} ms | {:.1}× |\n\
         | `PUT …/automerge/paper.txt` through a node: read, {} signed durable changes | {:.0} ms | {:.1}× |\n\n\
         Peak RSS of the node after the import: {rss:.0} MiB. Automerge 0.12 applies each \
         batch of changes by walking the document so far, so the replay costs versions × \
         operations; long histories are therefore grouped into fewer versions (here {} of \
         about {} keystrokes each; a document of up to about 2,000 one-character changes keeps one version \
         per change).\n",
        bytes.len() / 1000,
        today(),
        ms(bare_load),
        foreign.versions.len(),
        ms(read_time),
        ms(read_time) / ms(bare_load),
        foreign.versions.len(),
        ms(through_node),
        ms(through_node) / ms(bare_load),
        foreign.versions.len(),
        changes / foreign.versions.len().max(1),
    );
    write_report("automerge-import", &section)
}
