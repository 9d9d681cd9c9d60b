//! Analyses in the index document: `analyses: {path: {result, content_hash,
//! by, at, model, model_digest}}`, `result` being the analysis as JSON. They
//! travel with the workspace, so teammates see them without re-running.

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use xencode_protocol::WorkspacePath;
use xencode_protocol::analysis::{AnalysisRecord, CodeAnalysis};

use super::{NewChange, Workspace, WorkspaceError, damaged, get_obj, get_str, get_u64};

/// Longest analysis JSON stored (a pathological file could produce more).
const MAX_RESULT_BYTES: usize = 4 * 1024 * 1024;

impl Workspace {
    /// Records the analysis of `path` (replacing an earlier one).
    pub fn put_analysis(
        &mut self,
        path: &WorkspacePath,
        record: &AnalysisRecord,
        now_ms: u64,
    ) -> Result<Vec<NewChange>, WorkspaceError> {
        self.existing_file(path)?;
        let result = serde_json::to_string(&record.analysis).map_err(damaged)?;
        if result.len() > MAX_RESULT_BYTES {
            return Err(WorkspaceError::Damaged(format!(
                "the analysis is {} bytes; at most {MAX_RESULT_BYTES} are stored",
                result.len()
            )));
        }
        let cites = self.access.am.get_heads();
        let am = &mut self.index.am;
        let analyses = match get_obj(am, &ROOT, "analyses") {
            Some(a) => a,
            None => am
                .put_object(ROOT, "analyses", ObjType::Map)
                .map_err(damaged)?,
        };
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
                    path,
                })
            })
            .collect();
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}
