//! Document extraction in a child process.
//!
//! pdf-extract panics on many malformed PDFs and can abort on some — which
//! no `catch_unwind` stops — so the node never extracts in its own process.
//! It runs its own binary with the hidden `extract-worker` subcommand, feeds
//! the document on stdin, and reads newline-delimited JSON [`WorkerMessage`]s
//! on stdout: one per PDF page as it is done, then the result. The worker
//! caps its own address space (`RLIMIT_AS`) before it reads a byte; the node
//! kills it when the time limit passes. A crash or a timeout is a clean error
//! — with the pages extracted so far, if any — and the node keeps serving.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use xencode_protocol::analysis::{DocumentMetadata, ProcessedDocument, Section};

use super::documents::{self, DocError, Kind};

/// The hidden subcommand.
pub const SUBCOMMAND: &str = "extract-worker";

/// One line the worker writes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerMessage {
    Page {
        page: u32,
        text: String,
    },
    Done {
        text: String,
        metadata: DocumentMetadata,
        sections: Vec<Section>,
        confidence: f64,
    },
    Failed {
        error: String,
    },
}

/// Limits of one extraction.
#[derive(Debug, Clone, Copy)]
pub struct DocLimits {
    pub max_bytes: u64,
    pub timeout: Duration,
    pub max_memory_mib: u64,
}

/// Why a document could not be processed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    #[error(
        "{0:?} is not a supported document; add PDF, HTML, DOCX or Markdown (.pdf, .html, .htm, .docx, .md)"
    )]
    Unsupported(String),
    #[error("the document is {size} bytes; the limit is {limit} (analysis.max_document_bytes)")]
    TooLarge { size: u64, limit: u64 },
    #[error("{0}")]
    Extraction(String),
    #[error("extraction took longer than {0:?} and was stopped (analysis.timeout_secs)")]
    Timeout(Duration),
    #[error("the extractor crashed on this document ({0}); the file may be damaged")]
    Crashed(String),
    #[error("cannot run the extractor: {0}")]
    Spawn(String),
}

/// The worker's side: reads the document from stdin, extracts, writes the
/// messages to stdout. Returns the process exit code.
pub fn run_worker(kind: &str, max_memory_mib: u64) -> u8 {
    let limit = max_memory_mib.saturating_mul(1024 * 1024);
    if let Err(e) = rlimit::setrlimit(rlimit::Resource::AS, limit, limit) {
        eprintln!("cannot limit the extractor's memory: {e}");
    }
    // Panics inside pdf-extract are caught per page; keep them off stderr.
    std::panic::set_hook(Box::new(|_| {}));
    let mut out = std::io::stdout().lock();
    let mut send = |m: &WorkerMessage| {
        if let Ok(line) = serde_json::to_string(m) {
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    };
    let Some(kind) = Kind::parse(kind) else {
        send(&WorkerMessage::Failed {
            error: format!("unknown document kind {kind:?}"),
        });
        return 2;
    };
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        send(&WorkerMessage::Failed {
            error: format!("cannot read the document: {e}"),
        });
        return 2;
    }
    // Each page goes out as soon as it is done, so a timeout or a crash
    // later still leaves the node the pages before it.
    let result = documents::extract(kind, &bytes, &mut |page, text| {
        send(&WorkerMessage::Page {
            page,
            text: text.to_owned(),
        });
    });
    match result {
        Ok(e) => {
            send(&WorkerMessage::Done {
                text: e.text,
                metadata: e.metadata,
                sections: e.sections,
                confidence: e.confidence,
            });
            0
        }
        Err(e) => {
            send(&WorkerMessage::Failed {
                error: e.to_string(),
            });
            match e {
                DocError::Encrypted => 3,
                _ => 2,
            }
        }
    }
}

/// The node's side: extracts `bytes` (named `filename`) with `program` (the
/// `xencode` binary) as a child process under `limits`.
pub async fn process(
    program: &Path,
    filename: &str,
    bytes: Vec<u8>,
    limits: DocLimits,
) -> Result<ProcessedDocument, WorkerError> {
    let kind = Kind::of(filename).ok_or_else(|| WorkerError::Unsupported(filename.to_owned()))?;
    let size = bytes.len() as u64;
    if size > limits.max_bytes {
        return Err(WorkerError::TooLarge {
            size,
            limit: limits.max_bytes,
        });
    }
    let started = Instant::now();
    let id = blake3::hash(&bytes).to_hex()[..32].to_owned();
    let mut child = tokio::process::Command::new(program)
        .args([
            SUBCOMMAND,
            "--kind",
            kind.as_str(),
            "--max-memory-mib",
            &limits.max_memory_mib.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| WorkerError::Spawn(e.to_string()))?;
    let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(WorkerError::Spawn("no pipes to the extractor".into()));
    };
    let feeder = tokio::spawn(async move {
        let _ = stdin.write_all(&bytes).await;
    });
    let mut lines = BufReader::new(stdout).lines();
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut pages: Vec<Section> = Vec::new();
    let mut stopped: Option<WorkerError> = None;
    let mut done = None;
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Err(_) => {
                let _ = child.kill().await;
                stopped = Some(WorkerError::Timeout(limits.timeout));
                break;
            }
            Ok(Ok(Some(line))) => match serde_json::from_str::<WorkerMessage>(&line) {
                Ok(WorkerMessage::Page { page, text }) => pages.push(Section {
                    heading: None,
                    level: 0,
                    text,
                    page: Some(page),
                }),
                Ok(WorkerMessage::Done {
                    text,
                    metadata,
                    sections,
                    confidence,
                }) => {
                    done = Some((text, metadata, sections, confidence));
                    break;
                }
                Ok(WorkerMessage::Failed { error }) => return Err(WorkerError::Extraction(error)),
                Err(_) => {}
            },
            Ok(Ok(None)) | Ok(Err(_)) => {
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                let why = match status {
                    Ok(Ok(s)) => describe_exit(s),
                    _ => "no exit status".into(),
                };
                stopped = Some(WorkerError::Crashed(why));
                break;
            }
        }
    }
    feeder.abort();
    let _ = child.kill().await;
    let elapsed = started.elapsed().as_millis() as u64;
    let doc = |text, metadata, sections, confidence| ProcessedDocument {
        id: id.clone(),
        original_filename: filename.to_owned(),
        document_type: kind.as_str().to_owned(),
        extracted_text: text,
        metadata,
        structured_content: sections,
        processing_time_ms: elapsed,
        confidence_score: confidence,
        summary: None,
    };
    if let Some((text, metadata, sections, confidence)) = done {
        return Ok(doc(text, metadata, sections, confidence));
    }
    let err = stopped.unwrap_or_else(|| WorkerError::Crashed("no result".into()));
    if pages.is_empty() {
        return Err(err);
    }
    // Partial text: the pages done before the worker was stopped.
    let text = pages
        .iter()
        .map(|p| p.text.trim())
        .collect::<Vec<_>>()
        .join("\n\n");
    let metadata = DocumentMetadata {
        size_bytes: size,
        warnings: vec![format!(
            "partial: {err}; {} pages were extracted",
            pages.len()
        )],
        ..DocumentMetadata::default()
    };
    Ok(doc(text, metadata, pages, 0.5))
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("killed by signal {sig}");
        }
    }
    status
        .code()
        .map_or_else(|| "no exit code".into(), |c| format!("exit code {c}"))
}
