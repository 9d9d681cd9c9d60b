//! Code analysis throughput over a large body of real Python — the standard
//! library of the machine's `python3` (its `.py` files, excluding
//! `site-packages`) — against bare tree-sitter parsing of the same files in
//! the same run. Writes the `code-analysis` section of `docs/benchmarks.md`.
//!
//! Run: `cargo bench -p xencode-analysis --bench code`. Without `python3` on
//! the PATH it says so and does nothing.

mod report;

use std::time::{Duration, Instant};

use report::{BoxError, python_files, stdlib, today};
use xencode_analysis::code::{Limits, analyze, parse};

fn main() -> Result<(), BoxError> {
    let Some(dir) = stdlib() else {
        println!("SKIP: no python3 on the PATH; this benchmark analyses its standard library");
        return Ok(());
    };
    let mut paths = Vec::new();
    python_files(&dir, &mut paths);
    paths.sort();
    let limits = Limits::default();
    let sources: Vec<String> = paths
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter(|s| s.len() <= limits.max_bytes)
        .collect();
    let bytes: usize = sources.iter().map(String::len).sum();
    let mb = bytes as f64 / 1e6;
    println!(
        "{} files, {mb:.1} MB of Python from {}",
        sources.len(),
        dir.display()
    );

    // Bare tree-sitter: parse every file.
    let mut parser = tree_sitter::Parser::new();
    parser.set_language(&tree_sitter_python::LANGUAGE.into())?;
    let started = Instant::now();
    let mut nodes = 0usize;
    for s in &sources {
        if let Some(tree) = parser.parse(s, None) {
            nodes += tree.root_node().descendant_count();
        }
    }
    let bare = started.elapsed();

    // Xencode: parse with limits, then the full analysis.
    let started = Instant::now();
    let (mut errors, mut security, mut hints, mut outline) = (0, 0, 0, 0);
    for s in &sources {
        let (parsed, _) = parse(s, None, limits)?;
        let a = analyze(&parsed);
        errors += usize::from(!a.syntax_errors.is_empty());
        security += a.security_issues.len();
        hints += a.performance_hints.len();
        outline += a.outline.len();
    }
    let ours = started.elapsed();
    let rate = |d: Duration| mb / d.as_secs_f64();
    let ratio = ours.as_secs_f64() / bare.as_secs_f64();
    println!(
        "bare tree-sitter {bare:?} ({:.1} MB/s, {nodes} nodes); xencode analysis {ours:?} ({:.1} MB/s); {ratio:.2}x",
        rate(bare),
        rate(ours)
    );
    let report = format!(
        "Measured {} on this project's CI machine kind (2 cores), release build, one run, one \
         thread. Input: the `.py` files of the machine's Python standard library ({}; {} files, \
         {mb:.1} MB).\n\n\
         | what | time | throughput |\n|---|---|---|\n\
         | bare tree-sitter-python parse | {:.2} s | {:.1} MB/s |\n\
         | xencode analysis (parse + syntax errors, outline, complexity, security, performance, suggestions) | {:.2} s | {:.1} MB/s |\n\n\
         **Ratio {ratio:.2}x the bare parse.** Found along the way: {errors} files with syntax \
         errors (the standard library ships deliberately broken test inputs), {security} security \
         issues, {hints} performance hints, {outline} outline items. The analysis walks every \
         node iteratively, twice (names, then findings), and reads node text for calls, \
         assignments and attributes; the parse itself is the same tree-sitter parse.\n",
        today(),
        dir.display(),
        sources.len(),
        bare.as_secs_f64(),
        rate(bare),
        ours.as_secs_f64(),
        rate(ours),
    );
    report::write_report("code-analysis", &report)
}
