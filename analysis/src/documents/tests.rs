//! Text extraction from real and damaged documents: the PDF samples in
//! `../shared/data/pdfs` (skipped with a message when absent), HTML, DOCX
//! and Markdown, truncated and random input.

use std::io::Write;
use std::path::PathBuf;

use super::*;

/// `../shared/data/pdfs/NAME`, or `None` (said on stderr) when absent.
fn sample(name: &str) -> Option<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/pdfs")
        .join(name);
    match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(_) => {
            assert!(
                std::env::var("XENCODE_REQUIRE_ALL_TESTS").as_deref() != Ok("1"),
                "{} is required",
                path.display()
            );
            eprintln!("SKIPPED: {} is absent", path.display());
            None
        }
    }
}

fn none(_: u32, _: &str) {}

#[test]
fn pdfs_give_their_text_page_by_page() {
    let Some(bytes) = sample("004-pdflatex-4-pages.pdf") else {
        return;
    };
    let mut seen = Vec::new();
    let out = extract(Kind::Pdf, &bytes, &mut |n, _| seen.push(n)).expect("extract");
    assert_eq!(out.metadata.pages, Some(4));
    assert_eq!(
        seen,
        vec![1, 2, 3, 4],
        "pages are reported as they are done"
    );
    assert_eq!(out.sections.len(), 4);
    assert_eq!(out.confidence, 1.0);
    assert!(out.text.len() > 1000, "{}", out.text.len());
}

#[test]
fn the_geotopo_thesis_extracts_with_ligatures_normalised() {
    let Some(bytes) = sample("009-GeoTopo-komprimiert.pdf") else {
        return;
    };
    let out = extract(Kind::Pdf, &bytes, &mut none).expect("extract");
    assert_eq!(out.metadata.pages, Some(117));
    // Phrases checked by hand against the PDF.
    assert!(out.text.contains("Geometrie und Topologie"), "title page");
    assert!(out.text.contains("Wintersemester 2013/2014"), "Vorwort");
    assert!(
        !out.text.contains('\u{FB01}'),
        "the fi ligature is normalised away"
    );
    assert!(
        out.confidence > 0.95,
        "{} {:?}",
        out.confidence,
        out.metadata.warnings
    );
}

#[test]
fn an_encrypted_pdf_names_the_cause() {
    let Some(bytes) = sample("005-libreoffice-writer-password.pdf") else {
        return;
    };
    let err = extract(Kind::Pdf, &bytes, &mut none).err();
    assert_eq!(err, Some(DocError::Encrypted));
    assert!(DocError::Encrypted.to_string().contains("password"));
}

#[test]
fn truncated_and_random_pdfs_are_clean_errors() {
    if let Some(bytes) = sample("001-minimal-document.pdf") {
        let cut = &bytes[..bytes.len() / 3];
        // Either a clean error or (lopdf is lenient) a result: never a panic.
        let _ = extract(Kind::Pdf, cut, &mut none);
    }
    let random = random_bytes(10_000);
    assert!(matches!(
        extract(Kind::Pdf, &random, &mut none),
        Err(DocError::Malformed { kind: "PDF", .. })
    ));
}

#[test]
fn html_keeps_main_text_headings_and_code_and_drops_chrome() {
    let page = r#"<!doctype html><html lang="en"><head><title>Design notes</title>
        <meta name="author" content="Ada"><style>body{color:red}</style>
        <script>var secret = 1;</script></head>
        <body><nav>Home | About</nav>
        <main><h1>Sync design</h1><p>Changes travel   as <b>raw</b> changes.</p>
        <h2>Limits</h2><pre><code>MAX_FRAME = 8 MiB
  indented</code></pre></main>
        <footer>© someone</footer></body></html>"#;
    let out = extract(Kind::Html, page.as_bytes(), &mut none).expect("html");
    assert_eq!(out.metadata.title.as_deref(), Some("Design notes"));
    assert_eq!(out.metadata.author.as_deref(), Some("Ada"));
    assert_eq!(out.metadata.language.as_deref(), Some("en"));
    let headings: Vec<(Option<&str>, u8)> = out
        .sections
        .iter()
        .map(|s| (s.heading.as_deref(), s.level))
        .collect();
    assert_eq!(
        headings,
        vec![(Some("Sync design"), 1), (Some("Limits"), 2)]
    );
    assert_eq!(out.sections[0].text, "Changes travel as raw changes.");
    assert!(
        out.sections[1]
            .text
            .contains("MAX_FRAME = 8 MiB\n  indented"),
        "code kept verbatim"
    );
    for gone in ["Home", "secret", "color", "someone"] {
        assert!(!out.text.contains(gone), "{gone} leaked: {}", out.text);
    }
}

#[test]
fn deeply_nested_html_is_refused_not_parsed() {
    let deep = format!(
        "<html><body>{}x{}</body></html>",
        "<div>".repeat(100_000),
        "</div>".repeat(100_000)
    );
    assert_eq!(
        extract(Kind::Html, deep.as_bytes(), &mut none),
        Err(DocError::TooDeep)
    );
}

/// A DOCX made here: the parts Word writes that matter for text.
fn make_docx(body: &str, extra: Option<(&str, Vec<u8>)>) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default();
        zip.start_file("word/document.xml", opts).expect("part");
        write!(
            zip,
            r#"<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>{body}</w:body></w:document>"#
        )
        .expect("write");
        zip.start_file("docProps/core.xml", opts).expect("part");
        write!(
            zip,
            r#"<cp:coreProperties xmlns:cp="x" xmlns:dc="y"><dc:title>Spec</dc:title><dc:creator>Grace</dc:creator></cp:coreProperties>"#
        )
        .expect("write");
        if let Some((name, bytes)) = extra {
            zip.start_file(name, opts).expect("part");
            zip.write_all(&bytes).expect("write");
        }
        zip.finish().expect("finish");
    }
    buf.into_inner()
}

#[test]
fn docx_gives_paragraphs_headings_and_tables() {
    let body = r#"<w:p><w:pPr><w:pStyle w:val="Heading1"/></w:pPr><w:r><w:t>Overview</w:t></w:r></w:p>
        <w:p><w:r><w:t>Nodes sync </w:t></w:r><w:r><w:t>without a server &amp; offline.</w:t></w:r></w:p>
        <w:tbl><w:tr><w:tc><w:p><w:r><w:t>role</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>rights</w:t></w:r></w:p></w:tc></w:tr>
        <w:tr><w:tc><w:p><w:r><w:t>viewer</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>read</w:t></w:r></w:p></w:tc></w:tr></w:tbl>"#;
    let out = extract(Kind::Docx, &make_docx(body, None), &mut none).expect("docx");
    assert_eq!(out.metadata.title.as_deref(), Some("Spec"));
    assert_eq!(out.metadata.author.as_deref(), Some("Grace"));
    assert_eq!(out.sections[0].heading.as_deref(), Some("Overview"));
    assert!(
        out.text.contains("Nodes sync without a server & offline."),
        "{}",
        out.text
    );
    assert!(
        out.text.contains("role | rights |") && out.text.contains("viewer | read |"),
        "{}",
        out.text
    );
}

/// A DOCX whose only part is `word/document.xml`, written in `chunks`.
fn docx_of_one_part<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        zip.start_file(
            "word/document.xml",
            zip::write::SimpleFileOptions::default(),
        )
        .expect("part");
        for chunk in chunks {
            zip.write_all(chunk).expect("write");
        }
        zip.finish().expect("finish");
    }
    buf.into_inner()
}

#[test]
fn a_docx_zip_bomb_is_refused() {
    // 80 MiB of zeros compresses to ~80 KiB.
    let bomb = make_docx("<w:p/>", None);
    assert!(extract(Kind::Docx, &bomb, &mut none).is_ok());
    let zeros = vec![b' '; 1024 * 1024];
    let bytes = docx_of_one_part(std::iter::repeat_n(&zeros[..], 80));
    assert!(bytes.len() < 2 * 1024 * 1024, "{}", bytes.len());
    assert_eq!(
        extract(Kind::Docx, &bytes, &mut none),
        Err(DocError::ZipBomb)
    );
    assert!(matches!(
        extract(Kind::Docx, b"not a zip", &mut none),
        Err(DocError::Malformed { .. })
    ));
}

#[test]
fn markdown_sections_follow_headings_outside_code_fences() {
    let md = "# Guide\nIntro ﬁle.\n\n## Setup\nRun it.\n```sh\n# not a heading\n```\n";
    let out = extract(Kind::Markdown, md.as_bytes(), &mut none).expect("md");
    assert_eq!(out.metadata.title.as_deref(), Some("Guide"));
    let headings: Vec<_> = out
        .sections
        .iter()
        .filter_map(|s| s.heading.clone())
        .collect();
    assert_eq!(headings, vec!["Guide", "Setup"]);
    assert!(out.sections[1].text.contains("# not a heading"));
    assert!(out.text.contains("Intro file."), "NFKC: {}", out.text);
}

/// Random bytes of `len` (xorshift, fixed seed).
fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn garbage_and_empty_extractions_get_low_confidence_and_a_warning() {
    let random = random_bytes(60_000);
    for kind in [Kind::Html, Kind::Markdown] {
        let out = extract(kind, &random, &mut none).expect("extracts something");
        assert!(!out.text.is_empty());
        assert!(
            out.confidence < 0.3,
            "{kind:?}: random bytes at confidence {}",
            out.confidence
        );
        assert!(
            out.metadata
                .warnings
                .iter()
                .any(|w| w.contains("does not look like text")),
            "{:?}",
            out.metadata.warnings
        );
    }
    // No text at all: confidence 0 and a warning.
    let empty = extract(
        Kind::Html,
        b"<html><body><img src=x></body></html>",
        &mut none,
    )
    .expect("html");
    assert_eq!(empty.confidence, 0.0);
    assert!(
        empty
            .metadata
            .warnings
            .iter()
            .any(|w| w.contains("no text was found"))
    );
    // Real text of several kinds stays confident.
    let prose = "Nodes exchange signed changes over libp2p; every change is checked against its author's rights before it is applied. ".repeat(20);
    let code_md = format!(
        "# Setup\n\n{prose}\n\n```\nfor (i, x) in xs.iter().enumerate() {{ let y = f(x)?; }}\n```\n"
    );
    let out = extract(Kind::Markdown, code_md.as_bytes(), &mut none).expect("md");
    assert!(out.confidence > 0.9, "{}", out.confidence);
    assert!(
        out.metadata.warnings.is_empty(),
        "{:?}",
        out.metadata.warnings
    );
    let german =
        "Die Topologie untersucht Eigenschaften, die unter stetigen Abbildungen erhalten bleiben. "
            .repeat(10);
    let out = extract(Kind::Markdown, german.as_bytes(), &mut none).expect("md");
    assert!(out.confidence > 0.9, "{}", out.confidence);
}

#[test]
fn a_docx_cut_off_mid_xml_keeps_its_text_and_says_so() {
    let full = r#"<?xml version="1.0"?><w:document xmlns:w="w"><w:body><w:p><w:r><w:t>First paragraph survives.</w:t></w:r></w:p><w:p><w:r><w:t>Second is cut here and the rest is gone</w:t></w:r></w:p></w:body></w:document>"#;
    let cut_at = full.find("here").expect("marker");
    for cut in [cut_at, cut_at + 30] {
        let docx = docx_of_one_part([&full.as_bytes()[..cut]]);
        let out = extract(Kind::Docx, &docx, &mut none).expect("partial text");
        assert!(
            out.text.contains("First paragraph survives."),
            "{}",
            out.text
        );
        assert!(out.text.contains("Second is cut"), "{}", out.text);
        assert!(
            out.metadata
                .warnings
                .iter()
                .any(|w| w.contains("cut off") || w.contains("damaged")),
            "{:?}",
            out.metadata.warnings
        );
    }
}

#[test]
fn words_hyphenated_at_line_ends_are_joined_and_real_hyphens_kept() {
    let text = "The docu-\nment was well-\nknown to the team; a well-known fact.\nJean-\nPaul read COVID-\n19 notes and the re-\n  ports.\nA dash at the end -\nstays.";
    assert_eq!(
        quality::dehyphenate(text),
        "The document was well-known to the team; a well-known fact.\nJean-\nPaul read COVID-\n19 notes and the reports.\nA dash at the end -\nstays."
    );
}
/// The damage issue 18 names (pdftotext reads through it): the last 30
/// bytes cut (the table and trailer lost), 1 KiB inserted mid-file (every
/// offset after it wrong), random or blank. Each sample, with a classic
/// table or an xref stream with object streams, gives every word it gives
/// undamaged, with a warning that it was rebuilt.
#[test]
fn damaged_pdfs_are_rebuilt_from_their_objects() {
    for (name, phrase) in [
        ("002-trivial-libre-office-writer.pdf", "Lorem ipsum"),
        ("004-pdflatex-4-pages.pdf", "some text without a meaning"),
        ("011-google-doc-document.pdf", "Exa mp le do cumen t"),
    ] {
        let Some(bytes) = sample(name) else {
            return;
        };
        let whole = extract(Kind::Pdf, &bytes, &mut none).expect("undamaged");
        assert!(whole.text.contains(phrase), "{name}: {}", whole.text);
        let words: std::collections::BTreeSet<&str> = whole.text.split_whitespace().collect();
        let mid = bytes.len() / 2;
        let inserted = |junk: Vec<u8>| [&bytes[..mid], &junk, &bytes[mid..]].concat();
        for (damage, damaged) in [
            ("cut 30 bytes", bytes[..bytes.len() - 30].to_vec()),
            ("1 KiB random inserted", inserted(random_bytes(1024))),
            ("1 KiB blank inserted", inserted(vec![b' '; 1024])),
        ] {
            let mut heard = Vec::new();
            let out = extract(Kind::Pdf, &damaged, &mut |n, _| heard.push(n))
                .unwrap_or_else(|e| panic!("{name}, {damage}: {e}"));
            let got: std::collections::BTreeSet<&str> = out.text.split_whitespace().collect();
            let missing: Vec<&&str> = words.difference(&got).collect();
            assert!(missing.is_empty(), "{name}, {damage}: lost {missing:?}");
            assert!(
                out.metadata.warnings.iter().any(|w| w.contains("rebuilt")),
                "{name}, {damage}: {:?}",
                out.metadata.warnings
            );
            let mut unique = heard.clone();
            unique.dedup();
            assert_eq!(heard, unique, "{name}, {damage}: a page was heard twice");
        }
    }
}
