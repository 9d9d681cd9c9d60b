//! The team's stored analysis as LSP diagnostics and hover text.
//!
//! Diagnostics come from the analysis stored in the workspace (whoever ran
//! it): syntax errors, CWE-tagged security issues, performance hints and
//! suggestions, at their lines. One made of other content than the node's
//! current text (its content hash differs) is marked stale. After edits
//! settle, the file is analysed again (stored for the team, so teammates'
//! editors update too).

use std::sync::Arc;

use serde_json::{Value, json};
use xencode_protocol::WorkspaceId;
use xencode_protocol::analysis::{AnalysisList, AnalysisRecord, AnalyzeRequest};

use super::presence::short;
use super::text;
use super::{Input, Server};

/// LSP severities.
const ERROR: u8 = 1;
const WARNING: u8 = 2;
const INFORMATION: u8 = 3;
const HINT: u8 = 4;

impl Server {
    /// Fetches the stored analyses of `ws` in the background.
    pub(super) fn fetch_analyses(&mut self, ws: WorkspaceId) {
        let Some(client) = self.client.clone() else {
            return;
        };
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let w = ws.to_string();
            if let Ok(list) = client
                .get_json::<AnalysisList>(&["api", "v1", "workspaces", &w, "analyses"])
                .await
            {
                let _ = tx.send(Input::Analyses(ws, list.analyses)).await;
            }
        });
    }

    /// Takes stored analyses in and publishes the open files' findings.
    pub(super) fn analyses(&mut self, ws: WorkspaceId, list: Vec<AnalysisRecord>) {
        for rec in list {
            let key = (ws, rec.path.clone());
            let newer = self.analyses.get(&key).is_none_or(|old| old.at <= rec.at);
            if newer {
                self.analyses.insert(key, rec);
            }
        }
        let uris = self.uris_in(ws);
        for uri in uris {
            self.publish(&uri);
        }
    }

    /// Publishes the diagnostics of one open file.
    pub(super) fn publish(&self, uri: &str) {
        let Some(doc) = self.docs.get(uri) else {
            return;
        };
        let Some(rec) = self.analyses.get(&(doc.workspace, doc.path.to_string())) else {
            return;
        };
        let current = doc
            .node_text()
            .map(|t| blake3::hash(t.as_bytes()).to_hex().to_string());
        let stale = current.as_deref() != Some(rec.content_hash.as_str());
        let diagnostics = diagnostics(rec, stale);
        self.notify(
            "textDocument/publishDiagnostics",
            json!({"uri": uri, "diagnostics": diagnostics}),
        );
    }

    /// Analyses an edited file again (stored for the team when allowed).
    pub(super) fn reanalyse(&mut self, uri: &str) {
        let (Some(doc), Some(client)) = (self.docs.get(uri), self.client.clone()) else {
            return;
        };
        if !doc.path.as_str().ends_with(".py") {
            return;
        }
        let (ws, path, tx) = (doc.workspace, doc.path.to_string(), self.tx.clone());
        tokio::spawn(async move {
            let req = AnalyzeRequest {
                path,
                ai: false,
                model: None,
            };
            let w = ws.to_string();
            let client: Arc<_> = client;
            if let Ok(rec) = client
                .post_json::<_, AnalysisRecord>(&["api", "v1", "workspaces", &w, "analyze"], &req)
                .await
            {
                let _ = tx.send(Input::Analyses(ws, vec![rec])).await;
            }
        });
    }

    /// The findings at the hovered line, and the AI review if one is stored.
    pub(super) fn hover(&self, params: &Value) -> Value {
        let uri = params["textDocument"]["uri"].as_str().unwrap_or("");
        let line = params["position"]["line"].as_u64().unwrap_or(u64::MAX);
        let Some(doc) = self.docs.get(uri) else {
            return Value::Null;
        };
        let Some(rec) = self.analyses.get(&(doc.workspace, doc.path.to_string())) else {
            return Value::Null;
        };
        let here: Vec<String> = diagnostics(rec, false)
            .iter()
            .filter(|d| d["range"]["start"]["line"].as_u64() == Some(line))
            .filter_map(|d| d["message"].as_str().map(|m| format!("- {m}")))
            .collect();
        if here.is_empty() {
            return Value::Null;
        }
        let mut text = format!(
            "**xencode** (analysis by {})\n\n{}",
            short(&rec.by),
            here.join("\n")
        );
        if let Some(review) = rec.analysis.ai.text.as_deref().filter(|t| !t.is_empty()) {
            text.push_str("\n\n**AI review**\n\n");
            text.push_str(review);
        }
        json!({"contents": {"kind": "markdown", "value": text}})
    }
}

fn severity(s: &str) -> u8 {
    match s.to_ascii_lowercase().as_str() {
        "error" | "critical" | "high" => ERROR,
        "warning" | "medium" => WARNING,
        "low" | "info" => INFORMATION,
        _ => HINT,
    }
}

impl Server {
    /// The suggested fixes of the stored analysis on the requested lines,
    /// as quick fixes; only while the analysis is of the buffer's text (its
    /// positions would be off otherwise).
    pub(super) fn code_actions(&self, params: &Value) -> Value {
        let uri = params["textDocument"]["uri"].as_str().unwrap_or("");
        let Some(doc) = self.docs.get(uri) else {
            return json!([]);
        };
        let Some(rec) = self.analyses.get(&(doc.workspace, doc.path.to_string())) else {
            return json!([]);
        };
        if blake3::hash(doc.shadow.as_bytes()).to_hex().as_str() != rec.content_hash {
            return json!([]);
        }
        let line = |k: &str| params["range"][k]["line"].as_u64().unwrap_or(0);
        let (from, to) = (line("start"), line("end"));
        let actions: Vec<Value> = rec
            .analysis
            .suggestions
            .iter()
            .filter(|s| !s.edits.is_empty())
            .filter(|s| u64::from(s.line_start) <= to + 1 && u64::from(s.line_end) > from)
            .map(|s| {
                let edits: Vec<Value> = s
                    .edits
                    .iter()
                    .map(|e| {
                        let at = |l: u32, c: u32| {
                            text::pos_of_char(&doc.shadow, l.saturating_sub(1), c.saturating_sub(1))
                                .to_json()
                        };
                        json!({"range": {"start": at(e.line, e.column), "end": at(e.end_line, e.end_column)},
                            "newText": e.text})
                    })
                    .collect();
                let title = s.suggested_fix.as_deref().unwrap_or(&s.description);
                json!({
                    "title": format!("xencode: {title}"),
                    "kind": "quickfix",
                    "edit": {"documentChanges": [
                        {"textDocument": {"uri": uri, "version": doc.version}, "edits": edits}
                    ]},
                })
            })
            .collect();
        json!(actions)
    }
}

/// A diagnostic at 1-based `line` (and column, if known).
fn at(line: u32, column: Option<u32>, sev: u8, code: &str, message: String) -> Value {
    let l = line.saturating_sub(1);
    let c = column.map_or(0, |c| c.saturating_sub(1));
    let end = if column.is_some() { c + 1 } else { 10_000 };
    json!({
        "range": {"start": {"line": l, "character": c}, "end": {"line": l, "character": end}},
        "severity": sev,
        "source": "xencode",
        "code": code,
        "message": message,
    })
}

/// The diagnostics of an analysis; `stale` ones say so and are hints.
pub(super) fn diagnostics(rec: &AnalysisRecord, stale: bool) -> Vec<Value> {
    let a = &rec.analysis;
    let mut out = Vec::new();
    for e in &a.syntax_errors {
        out.push(at(
            e.line,
            Some(e.column),
            ERROR,
            "syntax",
            format!("syntax error: {}", e.message),
        ));
    }
    for s in &a.security_issues {
        out.push(at(
            s.line,
            None,
            severity(&s.severity),
            &s.cwe_id,
            format!("{} ({}): {}", s.kind, s.cwe_id, s.description),
        ));
    }
    for p in &a.performance_hints {
        out.push(at(
            p.line,
            None,
            INFORMATION,
            &p.kind,
            format!("performance: {}", p.description),
        ));
    }
    for s in &a.suggestions {
        let fix = s
            .suggested_fix
            .as_deref()
            .map(|f| format!(" — {f}"))
            .unwrap_or_default();
        out.push(at(
            s.line_start,
            None,
            HINT,
            &s.kind,
            format!("{}{fix}", s.description),
        ));
    }
    if stale {
        for d in &mut out {
            let m = d["message"].as_str().unwrap_or("").to_owned();
            d["message"] = json!(format!("(stale: the file changed since this analysis) {m}"));
            d["severity"] = json!(HINT);
        }
    }
    out
}
