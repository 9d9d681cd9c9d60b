//! The extraction worker as the node runs it: the real `xencode` binary in a
//! child process, with its limits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use xencode_analysis::worker::{DocLimits, WorkerError, process};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_xencode"))
}

fn sample(name: &str) -> Option<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/pdfs")
        .join(name);
    let bytes = std::fs::read(&path).ok();
    if bytes.is_none() {
        assert!(
            std::env::var("XENCODE_REQUIRE_ALL_TESTS").as_deref() != Ok("1"),
            "{} is required",
            path.display()
        );
        eprintln!("SKIPPED: {} is absent", path.display());
    }
    bytes
}

fn limits(timeout: Duration, max_memory_mib: u64) -> DocLimits {
    DocLimits {
        max_bytes: 50 * 1024 * 1024,
        timeout,
        max_memory_mib,
    }
}

#[tokio::test]
async fn the_worker_extracts_a_real_pdf_in_its_own_process() {
    let Some(bytes) = sample("009-GeoTopo-komprimiert.pdf") else {
        return;
    };
    let doc = process(
        bin(),
        "GeoTopo.pdf",
        bytes,
        limits(Duration::from_secs(120), 2048),
    )
    .await
    .expect("extracted");
    assert_eq!(doc.document_type, "pdf");
    assert_eq!(doc.metadata.pages, Some(117));
    assert!(doc.extracted_text.contains("Geometrie und Topologie"));
    assert_eq!(doc.id.len(), 32);
    assert!(doc.confidence_score > 0.95);
}

#[tokio::test]
async fn a_slow_extraction_is_stopped_at_the_time_limit_with_partial_text() {
    let Some(bytes) = sample("009-GeoTopo-komprimiert.pdf") else {
        return;
    };
    let out = process(
        bin(),
        "GeoTopo.pdf",
        bytes,
        limits(Duration::from_millis(300), 2048),
    )
    .await;
    match out {
        Err(WorkerError::Timeout(t)) => assert_eq!(t, Duration::from_millis(300)),
        Ok(doc) => {
            assert!(
                doc.metadata
                    .warnings
                    .iter()
                    .any(|w| w.starts_with("partial")),
                "{:?}",
                doc.metadata.warnings
            );
            assert!(doc.structured_content.len() < 117);
        }
        Err(other) => panic!("expected a timeout, got {other}"),
    }
}

#[tokio::test]
async fn a_worker_that_runs_out_of_memory_is_a_clean_error() {
    let Some(bytes) = sample("009-GeoTopo-komprimiert.pdf") else {
        return;
    };
    // 64 MiB of address space is not enough for the binary and the whole
    // PDF: the worker dies part way. The node gets a clean error — or the
    // pages done before the crash, marked partial — and keeps running.
    let out = process(
        bin(),
        "GeoTopo.pdf",
        bytes,
        limits(Duration::from_secs(60), 64),
    )
    .await;
    match out {
        Err(WorkerError::Crashed(why)) => assert!(!why.is_empty()),
        Ok(doc) => {
            let warning = doc.metadata.warnings.first().cloned().unwrap_or_default();
            assert!(
                warning.starts_with("partial") && warning.contains("crashed"),
                "{warning}"
            );
            assert!(doc.structured_content.len() < 117);
            assert!(doc.confidence_score < 1.0);
        }
        Err(other) => panic!("expected a crash, got {other}"),
    }
}

#[tokio::test]
async fn unsupported_and_oversize_documents_are_refused_before_any_work() {
    let small = DocLimits {
        max_bytes: 10,
        ..limits(Duration::from_secs(5), 512)
    };
    assert_eq!(
        process(bin(), "notes.md", vec![b'x'; 11], small)
            .await
            .err(),
        Some(WorkerError::TooLarge {
            size: 11,
            limit: 10
        })
    );
    assert!(matches!(
        process(bin(), "image.png", vec![1, 2, 3], small).await,
        Err(WorkerError::Unsupported(_))
    ));
    let Some(bytes) = sample("005-libreoffice-writer-password.pdf") else {
        return;
    };
    let err = process(
        bin(),
        "locked.pdf",
        bytes,
        limits(Duration::from_secs(30), 1024),
    )
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("encrypted"), "{err}");
}
