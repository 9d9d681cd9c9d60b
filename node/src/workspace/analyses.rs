//! Analyses and processed documents in the index document: `analyses: {path:
//! {result, content_hash, by, at, model, model_digest}}` (`result` the
//! analysis as JSON) and `documents: {id: {original_filename, document_type,
//! path, processed, by, at}}` (`processed` the document as JSON). They travel
//! with the workspace, so teammates see them without re-running anything.

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use xencode_protocol::WorkspacePath;
use xencode_protocol::analysis::{AnalysisRecord, CodeAnalysis, ProcessedDocument};
use xencode_protocol::policy::schema;

use super::{NewChange, Workspace, WorkspaceError, damaged, get_obj, get_str, get_u64};

/// Longest analysis or document JSON stored: what one change may carry and
/// still sync (a sync frame is at most 8 MiB).
const MAX_RESULT_BYTES: usize = 4 * 1024 * 1024;

impl Workspace {
    /// Records the analysis of `path` (replacing an earlier one).
    pub fn put_analysis(
        &mut self,
        path: &WorkspacePath,
        record: &AnalysisRecord,
        now_ms: u64,
    ) -> Result<Vec<NewChange>, WorkspaceError> {
        if !self.has_file(path) {
            return Err(WorkspaceError::FileNotFound(path.clone()));
        }
        let result = serde_json::to_string(&record.analysis).map_err(damaged)?;
        if result.len() > MAX_RESULT_BYTES {
            return Err(WorkspaceError::Damaged(format!(
                "the analysis is {} bytes; at most {MAX_RESULT_BYTES} are stored",
                result.len()
            )));
        }
        let cites = self.access.am.get_heads();
        let am = &mut self.index.am;
        let analyses = schema::ensure_map(am, &ROOT, "analyses").map_err(damaged)?;
        let entry = am
            .put_object(&analyses, path.as_str(), ObjType::Map)
            .map_err(damaged)?;
        am.put(&entry, "result", result).map_err(damaged)?;
        am.put(&entry, "content_hash", record.content_hash.as_str())
            .map_err(damaged)?;
        am.put(&entry, "by", record.by.as_str()).map_err(damaged)?;
        am.put(&entry, "at", record.at).map_err(damaged)?;
        for (key, value) in [
            ("model", &record.model),
            ("model_digest", &record.model_digest),
        ] {
            if let Some(v) = value {
                am.put(&entry, key, v.as_str()).map_err(damaged)?;
            }
        }
        Ok(self.index.commit(now_ms, &cites).into_iter().collect())
    }

    /// Every stored analysis, sorted by path; unreadable entries (from a
    /// newer version, say) are skipped.
    pub fn analyses(&self) -> Vec<AnalysisRecord> {
        let am = &self.index.am;
        let Some(analyses) = get_obj(am, &ROOT, "analyses") else {
            return Vec::new();
        };
        let mut out: Vec<AnalysisRecord> = am
            .keys(&analyses)
            .filter_map(|path| {
                let e = get_obj(am, &analyses, &path)?;
                let analysis: CodeAnalysis =
                    serde_json::from_str(&get_str(am, &e, "result")?).ok()?;
                Some(AnalysisRecord {
                    analysis,
                    content_hash: get_str(am, &e, "content_hash").unwrap_or_default(),
                    by: get_str(am, &e, "by").unwrap_or_default(),
                    at: get_u64(am, &e, "at").unwrap_or(0),
                    model: get_str(am, &e, "model"),
                    model_digest: get_str(am, &e, "model_digest"),
                    incremental: false,
                    stored: true,
                    stale: None,
                    path,
                })
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }

    /// Records a processed document; its text is cut to what one change can
    /// carry (saying so in its warnings). `path` is where the original file
    /// is stored in the workspace, if it is.
    pub fn put_document(
        &mut self,
        doc: &ProcessedDocument,
        path: Option<&str>,
        by: &str,
        now_ms: u64,
    ) -> Result<Vec<NewChange>, WorkspaceError> {
        let mut doc = doc.clone();
        let mut json = serde_json::to_string(&doc).map_err(damaged)?;
        if json.len() > MAX_RESULT_BYTES {
            doc.structured_content.clear();
            let keep = doc
                .extracted_text
                .char_indices()
                .map(|(i, _)| i)
                .take_while(|i| *i < MAX_RESULT_BYTES / 2)
                .last()
                .unwrap_or(0);
            doc.extracted_text.truncate(keep);
            doc.metadata.warnings.push(format!(
                "text cut to {keep} bytes to fit the workspace; sections dropped"
            ));
            json = serde_json::to_string(&doc).map_err(damaged)?;
        }
        let cites = self.access.am.get_heads();
        let am = &mut self.index.am;
        let documents = schema::ensure_map(am, &ROOT, "documents").map_err(damaged)?;
        let entry = am
            .put_object(&documents, doc.id.as_str(), ObjType::Map)
            .map_err(damaged)?;
        am.put(&entry, "original_filename", doc.original_filename.as_str())
            .map_err(damaged)?;
        am.put(&entry, "document_type", doc.document_type.as_str())
            .map_err(damaged)?;
        if let Some(p) = path {
            am.put(&entry, "path", p).map_err(damaged)?;
        }
        am.put(&entry, "processed", json).map_err(damaged)?;
        am.put(&entry, "by", by).map_err(damaged)?;
        am.put(&entry, "at", now_ms).map_err(damaged)?;
        Ok(self.index.commit(now_ms, &cites).into_iter().collect())
    }

    /// Every processed document, by file name.
    pub fn documents(&self) -> Vec<ProcessedDocument> {
        let am = &self.index.am;
        let Some(documents) = get_obj(am, &ROOT, "documents") else {
            return Vec::new();
        };
        let mut out: Vec<ProcessedDocument> = am
            .keys(&documents)
            .filter_map(|id| {
                let e = get_obj(am, &documents, &id)?;
                serde_json::from_str(&get_str(am, &e, "processed")?).ok()
            })
            .collect();
        out.sort_by(|a, b| a.original_filename.cmp(&b.original_filename));
        out
    }
}
