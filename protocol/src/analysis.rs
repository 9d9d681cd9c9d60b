//! The results of code analysis, in the seed's JSON shapes (lines and columns
//! 1-based). Pure data: the analysis itself runs in the node.

use serde::{Deserialize, Serialize};

/// A syntax error found by the parser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SyntaxError {
    pub line: u32,
    /// 1-based, in characters (Unicode scalar values).
    pub column: u32,
    pub message: String,
    pub severity: String,
}

/// An improvement with the lines it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Suggestion {
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub line_start: u32,
    pub line_end: u32,
    pub suggested_fix: Option<String>,
    /// The fix as text edits, when it can be made mechanically (an editor
    /// offers it as a code action). Each is relative to the analysed text;
    /// they do not overlap.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edits: Vec<FixEdit>,
}

/// Replaces the text from (`line`, `column`) up to (`end_line`,
/// `end_column`) with `text`; lines and columns 1-based, columns in
/// characters (Unicode scalar values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FixEdit {
    pub line: u32,
    pub column: u32,
    pub end_line: u32,
    pub end_column: u32,
    pub text: String,
}

/// A security weakness, with its CWE id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SecurityIssue {
    #[serde(rename = "type")]
    pub kind: String,
    pub severity: String,
    pub description: String,
    pub line: u32,
    /// e.g. `CWE-95`.
    pub cwe_id: String,
}

/// A likely performance problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PerformanceHint {
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    /// `low`, `medium` or `high`.
    pub impact: String,
    pub line: u32,
}

/// A class, function or method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OutlineItem {
    /// `class`, `function` or `method`.
    pub kind: String,
    pub name: String,
    pub line_start: u32,
    pub line_end: u32,
    /// Cyclomatic complexity (functions and methods; 0 for classes).
    pub complexity: u32,
}

/// What the AI part of an analysis did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AiResult {
    /// `not_requested`, `ok`, or why there is no AI text.
    pub status: String,
    pub model: Option<String>,
    pub text: Option<String>,
}

/// The analysis of one source file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CodeAnalysis {
    pub language: String,
    pub syntax_errors: Vec<SyntaxError>,
    pub suggestions: Vec<Suggestion>,
    /// Mean cyclomatic complexity of the file's functions (module-level code
    /// counts as one more when it has branches); 1.0 for straight-line code.
    pub complexity_score: f64,
    pub security_issues: Vec<SecurityIssue>,
    pub performance_hints: Vec<PerformanceHint>,
    pub outline: Vec<OutlineItem>,
    pub ai: AiResult,
}

/// `POST /api/v1/workspaces/{id}/analyze`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeRequest {
    /// A file of the workspace.
    pub path: String,
    /// Also ask the local Ollama for a review.
    #[serde(default)]
    pub ai: bool,
    /// The Ollama model to use (default: chosen by the node).
    #[serde(default)]
    pub model: Option<String>,
}

/// An analysis as stored in the workspace: the result, with its provenance
/// as fields beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AnalysisRecord {
    #[serde(flatten)]
    pub analysis: CodeAnalysis,
    pub path: String,
    /// blake3 of the analysed bytes, hex.
    pub content_hash: String,
    /// Peer id of the node that ran it.
    pub by: String,
    /// Unix milliseconds.
    pub at: u64,
    pub model: Option<String>,
    pub model_digest: Option<String>,
    /// Whether the parse reused the tree of the previous analysis.
    pub incremental: bool,
    /// Whether it was written into the workspace (a viewer's is not).
    pub stored: bool,
    /// In `GET .../analyses` only: whether the file changed since (its
    /// bytes no longer hash to `content_hash`), or is gone (`true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<bool>,
}

/// `GET /api/v1/workspaces/{id}/analyses`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AnalysisList {
    pub analyses: Vec<AnalysisRecord>,
}

/// What is known about a document.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DocumentMetadata {
    pub title: Option<String>,
    pub author: Option<String>,
    pub pages: Option<u32>,
    pub language: Option<String>,
    /// Size of the original, in bytes.
    pub size_bytes: u64,
    /// What went wrong on the way (pages that failed, a timeout), if anything.
    pub warnings: Vec<String>,
}

/// One section of a document: a heading and the text under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Section {
    pub heading: Option<String>,
    /// Heading level (1 = top); 0 for text before any heading, or a page.
    pub level: u8,
    pub text: String,
    /// The page, for PDFs.
    pub page: Option<u32>,
}

/// A document turned into searchable text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProcessedDocument {
    /// blake3 of the original bytes (first 16 bytes, hex).
    pub id: String,
    pub original_filename: String,
    /// `pdf`, `html`, `docx` or `markdown`.
    pub document_type: String,
    pub extracted_text: String,
    pub metadata: DocumentMetadata,
    pub structured_content: Vec<Section>,
    pub processing_time_ms: u64,
    /// 0..1: how much of the document was extracted.
    pub confidence_score: f64,
    /// The local Ollama's summary, when asked for (`doc add --ai`).
    #[serde(default)]
    pub summary: Option<AiResult>,
}

/// `GET /api/v1/workspaces/{id}/documents`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DocumentList {
    pub documents: Vec<ProcessedDocument>,
}

/// `GET /api/v1/models`: what the local Ollama offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelList {
    /// Ollama's URL.
    pub host: String,
    /// `ok`, or why there is no list.
    pub status: String,
    pub models: Vec<ModelEntry>,
    /// The model a review uses when none is asked for.
    pub default_model: Option<String>,
}

/// One Ollama model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ModelEntry {
    pub name: String,
    pub size_bytes: u64,
}
