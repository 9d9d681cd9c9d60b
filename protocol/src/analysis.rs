//! The results of code analysis, in the seed's JSON shapes (lines and columns
//! 1-based). Pure data: the analysis itself runs in the node.

use serde::{Deserialize, Serialize};

/// A syntax error found by the parser.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyntaxError {
    pub line: u32,
    /// 1-based, in characters (Unicode scalar values).
    pub column: u32,
    pub message: String,
    pub severity: String,
}

/// An improvement with the lines it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suggestion {
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub line_start: u32,
    pub line_end: u32,
    pub suggested_fix: Option<String>,
}

/// A security weakness, with its CWE id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerformanceHint {
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    /// `low`, `medium` or `high`.
    pub impact: String,
    pub line: u32,
}

/// A class, function or method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AiResult {
    /// `not_requested`, `ok`, or why there is no AI text.
    pub status: String,
    pub model: Option<String>,
    pub text: Option<String>,
}

/// The analysis of one source file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeRequest {
    /// A file of the workspace.
    pub path: String,
}

/// An analysis as stored in the workspace: the result, with its provenance
/// as fields beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

/// `GET /api/v1/workspaces/{id}/analyses`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisList {
    pub analyses: Vec<AnalysisRecord>,
}
