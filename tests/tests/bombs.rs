//! Parser bombs against a real node: files built to hurt the extractors and
//! the code analyser. Every job must end within its limits with a clear
//! error (or a bounded result), and the node must keep serving after each.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xencode_tests::{Node, health_ok, last_line, put, skip_or_fail};

/// A job that takes longer than this has escaped its limits (the node's
/// extraction timeout is set to 10 s below; the rest is process start-up).
const JOB_BOUND: Duration = Duration::from_secs(60);

struct Outcome {
    ok: bool,
    stderr: String,
    took: Duration,
}

fn doc_add(node: &Node, ws: &str, file: &Path) -> Outcome {
    let started = Instant::now();
    let out = node.cli(&["doc", "add", ws, &file.display().to_string()]);
    Outcome {
        ok: out.status.success(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    }
}

/// Runs a bomb and checks the node's answer: refused with a message that
/// contains `expect` (or accepted, when `expect` is empty), in bounded time,
/// and the node still healthy.
fn survive(node: &Node, ws: &str, name: &str, file: &Path, expect: &[&str]) {
    let o = doc_add(node, ws, file);
    eprintln!(
        "{name}: ok={} in {:?}: {}",
        o.ok,
        o.took,
        o.stderr.lines().next().unwrap_or("")
    );
    assert!(o.took < JOB_BOUND, "{name} took {:?}", o.took);
    if !o.ok {
        assert!(
            o.stderr.starts_with("error: "),
            "{name}: not a clear error: {}",
            o.stderr
        );
        assert!(
            expect.iter().any(|e| o.stderr.contains(e)),
            "{name}: expected one of {expect:?} in {}",
            o.stderr
        );
    }
    assert!(health_ok(&node.api_url), "the node survived {name}");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).expect("write");
    path
}

/// A PDF whose page content is an array nested `depth` deep: a recursive
/// parser overflows its stack (the extractor runs in a child process, so
/// the abort is the child's).
fn nested_pdf(depth: usize) -> Vec<u8> {
    let mut content = "[".repeat(depth);
    content.push_str(&"]".repeat(depth));
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_owned(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_owned(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>".to_owned(),
        format!(
            "<< /Length {} >>\nstream\n{content}\nendstream",
            content.len() + 1
        ),
    ];
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = pdf.len();
    pdf.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for off in offsets {
        pdf.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    pdf.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    pdf
}

/// A DOCX whose document part inflates to `inflated` bytes from a tiny zip.
fn zip_bomb(dir: &Path, inflated: usize) -> PathBuf {
    let path = dir.join("bomb.docx");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).expect("create"));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    zip.start_file("word/document.xml", options).expect("part");
    zip.write_all(b"<w:document xmlns:w=\"w\"><w:body><w:p><w:r><w:t>")
        .expect("write");
    let block = vec![b'a'; 1 << 20];
    for _ in 0..inflated / block.len() {
        zip.write_all(&block).expect("write");
    }
    zip.write_all(b"</w:t></w:r></w:p></w:body></w:document>")
        .expect("write");
    zip.finish().expect("finish");
    path
}

/// Pseudo-random bytes, reproducible.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn parser_bombs_end_within_their_limits_and_the_node_survives_them_all() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("node");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("config.toml"),
        "[analysis]\ntimeout_secs = 10\nmax_memory_mib = 1024\n",
    )
    .expect("config");
    let node = Node::start(&dir).expect("node");
    let ws = last_line(&node.cli(&["workspace", "create", "bombs"]));
    let files = tmp.path();

    // Random bytes behind a PDF header, and a real PDF cut at many points.
    for seed in 1..=8u64 {
        let mut bytes = b"%PDF-1.5\n".to_vec();
        bytes.extend(noise(seed, 4096 * seed as usize));
        let f = write(files, &format!("random-{seed}.pdf"), &bytes);
        survive(
            &node,
            &ws,
            "a random-byte PDF",
            &f,
            &["cannot be read", "no text"],
        );
    }
    let real = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/pdfs/004-pdflatex-4-pages.pdf");
    if let Ok(bytes) = std::fs::read(&real) {
        for cut in [100, bytes.len() / 4, bytes.len() / 2, bytes.len() - 10] {
            let f = write(files, &format!("cut-{cut}.pdf"), &bytes[..cut]);
            survive(
                &node,
                &ws,
                "a truncated PDF",
                &f,
                &["cannot be read", "no text"],
            );
        }
    } else {
        skip_or_fail(
            "the truncated-PDF bombs",
            &format!("{} is absent", real.display()),
        );
    }

    // A PDF whose extraction aborts (stack overflow in the child).
    let f = write(files, "nested.pdf", &nested_pdf(200_000));
    survive(
        &node,
        &ws,
        "a PDF whose extraction aborts",
        &f,
        &["cannot be read", "crashed", "stopped", "no text"],
    );

    // 100k-deep HTML.
    let mut html = "<div>".repeat(100_000);
    html.push_str("deep");
    let f = write(files, "deep.html", html.as_bytes());
    survive(&node, &ws, "100k-deep HTML", &f, &["nests deeper"]);

    // A DOCX zip bomb: 200 MiB of text from a zip of a few hundred KiB.
    let f = zip_bomb(files, 200 << 20);
    let size = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
    assert!(size < 2 << 20, "the bomb is small on disk: {size}");
    survive(&node, &ws, "a DOCX zip bomb", &f, &["zip bomb"]);

    // A 50 MB document: over the node's 50 MiB limit once 5 MB more is
    // added, and at 50 MB handled within the time limit either way.
    let mut big = Vec::with_capacity(50_000_000);
    while big.len() < 50_000_000 {
        big.extend_from_slice(b"# Section\n\nSome text of a very long design document.\n\n");
    }
    big.truncate(50_000_000);
    let f = write(files, "big.md", &big);
    survive(
        &node,
        &ws,
        "a 50 MB document",
        &f,
        &["limit", "too large", "stopped", "max_"],
    );
    big.resize(55 << 20, b'x');
    let f = write(files, "bigger.md", &big);
    let o = doc_add(&node, &ws, &f);
    assert!(
        !o.ok && o.stderr.contains("max_document_bytes"),
        "a document over the limit is refused, naming the limit: {}",
        o.stderr
    );

    // 200k nested parentheses in Python: the analyser refuses or answers
    // within its limits.
    let source = format!("x = {}1{}\n", "(".repeat(200_000), ")".repeat(200_000));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        assert_eq!(
            put(&node, &ws, "deep.py", &source).await,
            reqwest::StatusCode::OK
        );
    });
    let started = Instant::now();
    let out = node.cli(&["analyze", &ws, "deep.py"]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "200k nested parentheses: ok={} in {took:?}: {}",
        out.status.success(),
        stderr.lines().next().unwrap_or("")
    );
    assert!(took < JOB_BOUND);
    assert!(
        out.status.success() || stderr.starts_with("error: "),
        "{stderr}"
    );
    assert!(health_ok(&node.api_url), "the node survived deep Python");

    // After all of it, the node still does ordinary work.
    let ok = write(files, "fine.md", b"# Fine\nstill works\n");
    let o = doc_add(&node, &ws, &ok);
    assert!(o.ok, "{}", o.stderr);
}
