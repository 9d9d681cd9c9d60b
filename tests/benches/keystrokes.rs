//! Keystroke latency between two editors (issue 15): Neovim on node A
//! types, Neovim on node B shows it. Each keystroke is timed from the
//! moment A's Neovim inserted the character to the moment B's buffer held
//! it, both read from the same monotonic clock (Neovim's `vim.loop.hrtime`
//! on one machine). The baseline, in the same run: automerge-repo's own
//! two-client setup (a sync server and two client repos over WebSockets on
//! loopback), the same keystrokes at the same pace (`automerge-repo/`,
//! needs `node` and `npm`).
//!
//! `cargo bench -p xencode-tests --bench keystrokes` writes the
//! `keystrokes` section of `docs/benchmarks.md`. Needs `nvim`; without it
//! (or without `node`/`npm` for the baseline) it says so and skips.

#[path = "../../analysis/benches/report.rs"]
mod report;

use std::process::Command;
use std::time::{Duration, Instant};

use report::{BoxError, today, write_report};
use xencode_tests::Pair;
use xencode_tests::neovim::{self, Neovim};

/// Keystrokes typed, and the pause between two.
const KEYS: usize = 500;
const EVERY_MS: u64 = 40;
const START: &str = "start";

fn main() -> Result<(), BoxError> {
    if let Some(reason) = neovim::unavailable() {
        println!("SKIP: {reason}; this benchmark needs Neovim");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    let p = Pair::sharing(&[("bench.txt", "start\n")]).await;
    let scratch = p.tmp.path().to_path_buf();
    let va = Neovim::open(&scratch.join("nvim-a"), &p.a.dir, &p.fa.join("bench.txt"))?;
    let vb = Neovim::open(&scratch.join("nvim-b"), &p.b.dir, &p.fb.join("bench.txt"))?;
    // Both servers have their first answer from their node.
    tokio::time::sleep(Duration::from_secs(2)).await;
    vb.watch_first_line()?;
    let sent_path = scratch.join("sent.txt");
    va.type_timed(KEYS, EVERY_MS, &sent_path)?;
    let want = format!("{START}{}\n", "k".repeat(KEYS));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(sent_path.exists() && vb.text() == want) {
        if Instant::now() > deadline {
            return Err(format!("B never showed every keystroke: {:?}", vb.text()).into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent: Vec<u64> = std::fs::read_to_string(&sent_path)?
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let seen = vb.first_line_times(&scratch.join("nvim-b"))?;
    let mut lat: Vec<f64> = Vec::new();
    for (k, t) in sent.iter().enumerate() {
        let len = START.len() + k + 1;
        if let Some((_, at)) = seen.iter().find(|(l, _)| *l >= len) {
            lat.push(at.saturating_sub(*t) as f64 / 1e6);
        }
    }
    if lat.len() != KEYS {
        return Err(format!("{} of {KEYS} keystrokes timed", lat.len()).into());
    }
    let (p50, p99, max) = stats(&mut lat);
    println!("xencode: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms");
    let baseline = automerge_repo();
    let mut section = format!(
        "Measured {} on this project's CI machine kind (2 cores), release build, one run.\n\n\
         ### Keystroke latency between two editors (issue 15)\n\n\
         Neovim (Debian's {}, headless, its built-in LSP client running `xencode lsp`) on node A inserts \
         {KEYS} characters at the end of a line, one every {EVERY_MS} ms, through Neovim's API \
         (the buffer-change path a typed key takes); each is timed until Neovim's buffer on node B \
         holds it, both ends reading the same monotonic clock. The path: A's Neovim → A's server \
         (stdio) → A's node (HTTP splice, durable commit) → B's node (libp2p) → B's server (event \
         stream, HTTP catch-up) → B's Neovim (`workspace/applyEdit`).\n\n\
         | what | p50 | p99 | max |\n|---|---|---|---|\n\
         | xencode: Neovim on A → Neovim on B | {p50:.1} ms | {p99:.1} ms | {max:.1} ms |\n",
        today(),
        nvim_version(),
    );
    match baseline {
        Ok((b50, b99)) => {
            section.push_str(&format!(
                "| automerge-repo 2.5: client A → client B through its sync server (same keystrokes, same pace) | {b50:.1} ms | {b99:.1} ms | |\n\n\
                 Ratio xencode / automerge-repo: p50 {:.2}, p99 {:.2} (below 1 is faster). \
                 Aim (issue 15): p50 ≤ 30 ms, p99 ≤ 100 ms.\n\n",
                p50 / b50,
                p99 / b99
            ));
        }
        Err(e) => {
            println!("SKIP baseline: {e}");
            section.push_str(&format!(
                "\nThe automerge-repo baseline did not run here ({e}). Aim (issue 15): p50 ≤ 30 ms, p99 ≤ 100 ms.\n\n"
            ));
        }
    }
    write_report("keystrokes", &section)?;
    drop((va, vb));
    Ok(())
}

/// (p50, p99, max) of `v`, sorted in place.
fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), v[v.len() - 1])
}

fn nvim_version() -> String {
    Command::new("nvim")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .next()
                .map(|l| l.trim_start_matches("NVIM ").to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// The baseline's (p50, p99) in ms: its script run with the same
/// keystrokes and pace.
fn automerge_repo() -> Result<(f64, f64), BoxError> {
    let out = report::automerge_repo("keystrokes.mjs", &[KEYS.to_string(), EVERY_MS.to_string()])?;
    let v: serde_json::Value = serde_json::from_str(out.trim())?;
    match (v["p50_ms"].as_f64(), v["p99_ms"].as_f64(), v["n"].as_u64()) {
        (Some(a), Some(b), Some(n)) if n == KEYS as u64 => {
            println!("automerge-repo: p50 {a:.1} ms, p99 {b:.1} ms");
            Ok((a, b))
        }
        _ => Err(format!("unexpected baseline output: {out}").into()),
    }
}
