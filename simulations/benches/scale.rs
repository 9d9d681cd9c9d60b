//! `cargo bench -p xencode-simulations`: how messages, bytes, gossip and
//! convergence grow with team size (10 to 1,000 members) and with history
//! length, from the simulator running the real sync engine. Writes the
//! measured section of `docs/scale.md` and `docs/scale.svg`.

use std::fmt::Write as _;
use std::time::Instant;

use xencode_simulations::{Report, Scenario, run};

fn scenario(nodes: usize, edit_for_ms: u64) -> Scenario {
    let text = format!(
        "name = \"scale-{nodes}\"\nnodes = {nodes}\ndegree = 4\ndocs = 2\nviewers = {}\nactive_writers = 10\nedit_for_ms = {edit_for_ms}\nedit_interval_ms = 2000\nlatency_ms = 2\njitter_ms = 3\nsettle_ms = 120000\n",
        nodes / 10
    );
    let path = std::env::temp_dir().join(format!("xencode-scale-{nodes}-{edit_for_ms}.toml"));
    std::fs::write(&path, text).expect("write scenario");
    Scenario::load(&path.display().to_string()).expect("scenario")
}

struct Row {
    nodes: usize,
    report: Report,
    wall_s: f64,
}

fn measure(nodes: usize, edit_for_ms: u64) -> Row {
    let sc = scenario(nodes, edit_for_ms);
    let started = Instant::now();
    let report = run(&sc, 1);
    let wall_s = started.elapsed().as_secs_f64();
    assert!(report.violations.is_empty(), "{}", report.render());
    eprintln!(
        "{nodes} nodes, {edit_for_ms} ms of edits: {wall_s:.1} s\n{}",
        report.render()
    );
    Row {
        nodes,
        report,
        wall_s,
    }
}

/// Bytes per edit per member of each kind: changes / have-need / sessions.
fn per_edit_by_kind(p: &Report) -> String {
    let per = |k: &str| {
        p.bytes_by_kind.get(k).copied().unwrap_or(0) as f64
            / p.nodes.max(1) as f64
            / p.edits.max(1) as f64
    };
    format!(
        "{:.0} / {:.0} / {:.0}",
        per("changes"),
        per("have_need"),
        per("session")
    )
}

fn svg(rows: &[Row]) -> String {
    let (w, h, pad) = (640.0, 360.0, 50.0);
    let xs: Vec<f64> = rows.iter().map(|r| (r.nodes as f64).log10()).collect();
    let (x0, x1) = (xs[0], xs[xs.len() - 1]);
    let ymax = rows
        .iter()
        .map(|r| r.report.bytes_max as f64)
        .fold(1.0, f64::max)
        .log10();
    let px = |x: f64| pad + (x - x0) / (x1 - x0) * (w - 2.0 * pad);
    let py = |v: f64| h - pad - (v.max(1.0).log10() / ymax) * (h - 2.0 * pad);
    let line = |f: &dyn Fn(&Row) -> f64| {
        rows.iter()
            .zip(&xs)
            .map(|(r, x)| format!("{:.1},{:.1}", px(*x), py(f(r))))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        s,
        "<text x=\"{pad}\" y=\"20\">Sync bytes sent per member vs team size (log-log; 10 writers, ~50 edits)</text>"
    );
    let _ = writeln!(
        s,
        "<line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        h - pad,
        w - pad,
        h - pad
    );
    let _ = writeln!(
        s,
        "<line x1=\"{pad}\" y1=\"{pad}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/>",
        h - pad
    );
    for (r, x) in rows.iter().zip(&xs) {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            px(*x),
            h - pad + 16.0,
            r.nodes
        );
    }
    for e in 3..=(ymax.ceil() as i32) {
        let y = py(10f64.powi(e));
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{y:.1}\" text-anchor=\"end\">1e{e}</text>",
            pad - 4.0
        );
    }
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"#0550ae\" stroke-width=\"2\" points=\"{}\"/>",
        line(&|r| r.report.bytes_mean)
    );
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"#cf222e\" stroke-width=\"2\" points=\"{}\"/>",
        line(&|r| r.report.bytes_max as f64)
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" fill=\"#0550ae\">mean per member</text>",
        w - 200.0,
        pad + 10.0
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" fill=\"#cf222e\">busiest member</text>",
        w - 200.0,
        pad + 26.0
    );
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">members</text>",
        w / 2.0,
        h - 12.0
    );
    s.push_str("</svg>\n");
    s
}

fn main() {
    let sizes = [10, 25, 50, 100, 250, 500, 1000];
    let by_size: Vec<Row> = sizes.iter().map(|&n| measure(n, 10_000)).collect();
    let histories = [5_000, 10_000, 20_000, 40_000];
    let by_history: Vec<Row> = histories.iter().map(|&ms| measure(50, ms)).collect();

    let mut md = String::new();
    let _ = writeln!(
        md,
        "Measured by `cargo bench -p xencode-simulations` (seed 1, release build, one run per row, 2-core machine). Mesh degree 4, 2 documents, 10 % viewers, 10 writers editing every ~2 s for 10 s of virtual time, 2-5 ms links.\n"
    );
    let _ = writeln!(
        md,
        "| members | edits | sync messages per member (mean / busiest) | sync bytes per member (mean / busiest) | busiest / mean | bytes per edit per member | of which changes / have-need / sessions | gossip deliveries per member | max lag (changes) | converged | convergence after the last edit | simulator wall time |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &by_size {
        let p = &r.report;
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} / {} | {:.0} / {} | {:.1}× | {:.0} | {} | {:.0} | {} | {} | {} ms | {:.1} s |",
            r.nodes,
            p.edits,
            p.messages_mean,
            p.messages_max,
            p.bytes_mean,
            p.bytes_max,
            p.bytes_max as f64 / p.bytes_mean.max(1.0),
            p.bytes_mean / p.edits.max(1) as f64,
            per_edit_by_kind(p),
            p.gossip_messages as f64 / r.nodes as f64,
            p.max_lag,
            p.converged,
            p.convergence_ms.map_or("-".into(), |m| m.to_string()),
            r.wall_s
        );
    }
    let _ = writeln!(md, "\nHistory length, 50 members:\n");
    let _ = writeln!(
        md,
        "| edits | sync messages per member (mean) | sync bytes per member (mean) | bytes per edit per member | of which changes / have-need / sessions |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for r in &by_history {
        let p = &r.report;
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {} |",
            p.edits,
            p.messages_mean,
            p.bytes_mean,
            p.bytes_mean / p.edits.max(1) as f64,
            per_edit_by_kind(p)
        );
    }
    let _ = writeln!(md, "\n![sync bytes per member vs team size](scale.svg)");

    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = root.join("docs/scale.md");
    let text = std::fs::read_to_string(&doc).unwrap_or_default();
    let (start, end) = ("<!-- scale:start -->", "<!-- scale:end -->");
    let new = match (text.find(start), text.find(end)) {
        (Some(a), Some(b)) if a < b => format!("{}{start}\n{md}{}", &text[..a], &text[b..]),
        _ => format!("{text}\n{start}\n{md}{end}\n"),
    };
    std::fs::write(&doc, new).expect("write docs/scale.md");
    std::fs::write(root.join("docs/scale.svg"), svg(&by_size)).expect("write docs/scale.svg");
    eprintln!("wrote docs/scale.md and docs/scale.svg");
}
