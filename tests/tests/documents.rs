//! `xencode doc add` against a real node: real PDFs (text checked by hand),
//! an encrypted one, damaged ones, HTML, a DOCX made here, and the size limit.
//! Extraction runs in the node's worker process; the node must survive all.

use std::io::Write;
use std::path::{Path, PathBuf};

use xencode_tests::{Node, health_ok, last_line, skip_or_fail};

fn sample(name: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/pdfs")
        .join(name);
    if path.exists() {
        return Some(path);
    }
    skip_or_fail(
        &format!("a test on {name}"),
        &format!("{} is absent", path.display()),
    );
    None
}

fn add(node: &Node, ws: &str, file: &Path) -> (bool, serde_json::Value, String) {
    let out = node.cli(&["--json", "doc", "add", ws, &file.display().to_string()]);
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn docx(dir: &Path) -> PathBuf {
    let path = dir.join("spec.docx");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).expect("create"));
    zip.start_file(
        "word/document.xml",
        zip::write::SimpleFileOptions::default(),
    )
    .expect("part");
    write!(
        zip,
        r#"<w:document xmlns:w="w"><w:body><w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>Roles</w:t></w:r></w:p><w:p><w:r><w:t>Admins invite and revoke.</w:t></w:r></w:p></w:body></w:document>"#
    )
    .expect("write");
    zip.finish().expect("finish");
    path
}

#[test]
fn documents_are_extracted_stored_and_bad_ones_refused_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let node = Node::start(&tmp.path().join("a")).expect("node");
    let ws = last_line(&node.cli(&["workspace", "create", "docs"]));

    // HTML and a DOCX made here.
    let html = tmp.path().join("notes.html");
    std::fs::write(
        &html,
        "<html><head><title>Notes</title><script>x()</script></head><body><nav>menu</nav><h1>Sync</h1><p>Offline edits merge.</p></body></html>",
    )
    .expect("write");
    let (ok, doc, err) = add(&node, &ws, &html);
    assert!(ok, "{err}");
    assert_eq!(doc["document_type"], "html");
    assert_eq!(doc["metadata"]["title"], "Notes");
    assert_eq!(doc["extracted_text"], "Sync\n\nOffline edits merge.");
    let (ok, doc, err) = add(&node, &ws, &docx(tmp.path()));
    assert!(ok, "{err}");
    assert_eq!(doc["structured_content"][0]["heading"], "Roles");
    assert!(
        doc["extracted_text"]
            .as_str()
            .is_some_and(|t| t.contains("Admins invite and revoke."))
    );

    // Damaged PDFs: clean errors, and the node keeps serving.
    let random = tmp.path().join("random.pdf");
    std::fs::write(
        &random,
        (0..20_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<_>>(),
    )
    .expect("write");
    let (ok, _, err) = add(&node, &ws, &random);
    assert!(!ok && err.contains("cannot be read"), "{err}");
    if let Some(pdf) = sample("004-pdflatex-4-pages.pdf") {
        let bytes = std::fs::read(&pdf).expect("read");
        let cut = tmp.path().join("truncated.pdf");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
        let (ok, doc, err) = add(&node, &ws, &cut);
        assert!(
            ok || err.starts_with("error: "),
            "either partial text or a clean error: {err}"
        );
        if ok {
            assert!(doc["confidence_score"].as_f64().is_some_and(|c| c <= 1.0));
        }
        assert!(health_ok(&node.api_url), "the node survives damaged PDFs");

        // A real PDF, page by page; the original is kept in the workspace.
        let (ok, doc, err) = add(&node, &ws, &pdf);
        assert!(ok, "{err}");
        assert_eq!(doc["document_type"], "pdf");
        assert_eq!(doc["metadata"]["pages"], 4);
        assert_eq!(doc["structured_content"].as_array().map(Vec::len), Some(4));
        let files = String::from_utf8_lossy(&node.cli(&["file", "list", &ws]).stdout).into_owned();
        assert!(
            files
                .lines()
                .any(|l| l == "documents/004-pdflatex-4-pages.pdf"),
            "{files}"
        );
        let original = node
            .cli(&["file", "get", &ws, "documents/004-pdflatex-4-pages.pdf"])
            .stdout;
        assert_eq!(original, bytes, "the original is stored byte for byte");
    }
    if let Some(locked) = sample("005-libreoffice-writer-password.pdf") {
        let (ok, _, err) = add(&node, &ws, &locked);
        assert!(!ok && err.contains("encrypted"), "{err}");
    }
    // Unsupported kinds are refused before any work.
    let png = tmp.path().join("logo.png");
    std::fs::write(&png, [0x89, b'P', b'N', b'G']).expect("write");
    let (ok, _, err) = add(&node, &ws, &png);
    assert!(!ok && err.contains("not a supported document"), "{err}");

    // Everything that worked is listed.
    let list = serde_json::from_slice::<serde_json::Value>(
        &node.cli(&["--json", "doc", "list", &ws]).stdout,
    )
    .unwrap_or_default();
    let names: Vec<&str> = list["documents"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|x| x["original_filename"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        names.contains(&"notes.html") && names.contains(&"spec.docx"),
        "{list}"
    );
    assert!(health_ok(&node.api_url));
}

#[test]
fn a_document_over_the_size_limit_is_refused_with_the_limit_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("small");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("config.toml"),
        "[analysis]\nmax_document_bytes = 2048\n",
    )
    .expect("config");
    let node = Node::start(&dir).expect("node");
    let ws = last_line(&node.cli(&["workspace", "create", "docs"]));
    let big = tmp.path().join("big.md");
    std::fs::write(&big, "# Big\n".repeat(1000)).expect("write");
    let (ok, _, err) = add(&node, &ws, &big);
    assert!(!ok, "refused");
    assert!(
        err.contains("limit") && err.contains("max_document_bytes"),
        "{err}"
    );
    let small = tmp.path().join("small.md");
    std::fs::write(&small, "# Small\nfits\n").expect("write");
    let (ok, doc, err) = add(&node, &ws, &small);
    assert!(ok, "{err}");
    assert_eq!(doc["metadata"]["title"], "Small");
}
