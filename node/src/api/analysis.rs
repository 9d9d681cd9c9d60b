//! Analysis routes: `POST /api/v1/workspaces/{id}/analyze` runs the static
//! analysis of a workspace file on this machine and stores the result in the
//! workspace (so teammates get it with the next sync); `GET
//! /api/v1/workspaces/{id}/analyses` lists what is stored, whoever ran it.

use std::time::Instant;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use xencode_protocol::WorkspacePath;
use xencode_protocol::analysis::{AnalysisList, AnalysisRecord, AnalyzeRequest};
use xencode_protocol::api::FileKind;

use super::extract::{ApiJson, ApiPath};
use super::routes::{parse_path, parse_ws};
use super::{ApiError, ApiState};
use crate::analysis::code::{AnalysisError, Limits};
use crate::now_ms;
use crate::store::StoreError;

/// The language of a workspace path, by its extension.
fn language_of(path: &WorkspacePath) -> Option<&'static str> {
    let ext = path.as_str().rsplit_once('.')?.1.to_ascii_lowercase();
    matches!(ext.as_str(), "py" | "pyw" | "pyi").then_some("python")
}

pub async fn analyze(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<AnalyzeRequest>,
) -> Result<Response, ApiError> {
    let (id, path) = (parse_ws(&id)?, parse_path(&req.path)?);
    if language_of(&path).is_none() {
        return Err(ApiError::bad_request(
            "unsupported_language",
            format!("{path} is not Python (.py, .pyw, .pyi); only Python code is analysed so far"),
        ));
    }
    let store = state.store()?.clone();
    let file = store.get_file(id, path.clone()).await?;
    let not_text = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_text",
            format!("{path} is stored as binary; only UTF-8 text files can be analysed"),
        )
    };
    if file.kind != FileKind::Text {
        return Err(not_text());
    }
    let content_hash = blake3::hash(&file.bytes).to_hex().to_string();
    let source = String::from_utf8(file.bytes).map_err(|_| not_text())?;
    let key = format!("{id}/{path}");
    let parses = state.inner.parses.clone();
    let started = Instant::now();
    let outcome = tokio::task::spawn_blocking(move || {
        parses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .analyze(&key, &source, Limits::default())
    })
    .await
    .map_err(ApiError::internal)?;
    state
        .inner
        .metrics
        .analysis("code", started.elapsed().as_secs_f64());
    let (analysis, incremental) = outcome.map_err(|e| match e {
        AnalysisError::TooLarge { .. } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            e.to_string(),
        ),
        AnalysisError::Timeout(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "analysis_timeout",
            e.to_string(),
        ),
        other => ApiError::internal(other),
    })?;
    let now = now_ms();
    let mut record = AnalysisRecord {
        analysis,
        path: path.to_string(),
        content_hash,
        by: state.inner.node.peer_id.clone(),
        at: now,
        model: None,
        model_digest: None,
        incremental,
        stored: true,
    };
    match store.put_analysis(id, path, record.clone(), now).await {
        Ok(()) => {}
        // A viewer gets the analysis but cannot write it into the workspace.
        Err(StoreError::Forbidden(_)) => record.stored = false,
        Err(e) => return Err(e.into()),
    }
    Ok(Json(record).into_response())
}

pub async fn analyses(
    State(state): State<ApiState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_ws(&id)?;
    let analyses = state.store()?.analyses(id).await?;
    Ok(Json(AnalysisList { analyses }).into_response())
}
