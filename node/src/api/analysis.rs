//! Analysis routes: `POST /api/v1/workspaces/{id}/analyze` runs the static
//! analysis of a workspace file on this machine and stores the result in the
//! workspace (so teammates get it with the next sync); `GET
//! /api/v1/workspaces/{id}/analyses` lists what is stored, whoever ran it.

use std::time::Instant;

use axum::Json;
use axum::extract::multipart::{MultipartError, MultipartRejection};
use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use xencode_protocol::WorkspacePath;
use xencode_protocol::analysis::{
    AiResult, AnalysisList, AnalysisRecord, AnalyzeRequest, DocumentList, ModelEntry, ModelList,
};
use xencode_protocol::api::FileKind;

use super::extract::{ApiJson, WsId, parse_path};
use super::{AnalysisSetup, ApiError, ApiState};
use crate::now_ms;
use crate::store::StoreError;
use xencode_analysis::ai;
use xencode_analysis::code::{AnalysisError, Limits};
use xencode_analysis::worker::{self, WorkerError};

/// The language of a workspace path, by its extension.
fn language_of(path: &WorkspacePath) -> Option<&'static str> {
    let ext = path.as_str().rsplit_once('.')?.1.to_ascii_lowercase();
    matches!(ext.as_str(), "py" | "pyw" | "pyi").then_some("python")
}

/// With `ai: true` and `Accept: text/event-stream`, the answer is a stream
/// of server-sent events: `analysis` (the static result, at once), `token`
/// (each piece of the AI review as Ollama produces it, a JSON string), then
/// `done` (the stored record, review included).
pub async fn analyze(
    State(state): State<ApiState>,
    headers: HeaderMap,
    WsId(id): WsId,
    ApiJson(req): ApiJson<AnalyzeRequest>,
) -> Result<Response, ApiError> {
    let wants_stream = req.ai
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream"));
    let path = parse_path(&req.path)?;
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
    let for_ai = req.ai.then(|| source.clone());
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
        stale: None,
    };
    let Some(source) = for_ai else {
        let record = store_record(&store, id, &path, record).await?;
        return Ok(Json(record).into_response());
    };
    let setup = state.analysis_setup().ok_or_else(ApiError::starting)?;
    if wants_stream {
        return Ok(stream_review(
            state, setup, store, id, path, source, record, req.model,
        ));
    }
    let started = Instant::now();
    let (ai, used) = review(
        &state,
        &setup,
        path.as_str(),
        &source,
        &record.analysis,
        req.model.as_deref(),
        None,
    )
    .await;
    with_review(&state, &mut record, ai, used, started);
    let record = store_record(&store, id, &path, record).await?;
    Ok(Json(record).into_response())
}

/// Puts a review and its provenance into the record; counts its time.
fn with_review(
    state: &ApiState,
    record: &mut AnalysisRecord,
    ai: AiResult,
    digest: Option<String>,
    started: Instant,
) {
    let seconds = started.elapsed().as_secs_f64();
    state.inner.metrics.analysis("ai", seconds);
    state.inner.metrics.ollama("review", &ai.status, seconds);
    record.model = ai.model.clone();
    record.model_digest = digest;
    record.analysis.ai = ai;
}

/// Writes an analysis into the workspace; a viewer gets it back unstored.
async fn store_record(
    store: &crate::store::Store,
    id: xencode_protocol::WorkspaceId,
    path: &WorkspacePath,
    mut record: AnalysisRecord,
) -> Result<AnalysisRecord, ApiError> {
    match store
        .put_analysis(id, path.clone(), record.clone(), record.at)
        .await
    {
        Ok(()) => {}
        // A viewer gets the analysis but cannot write it into the workspace.
        Err(StoreError::Forbidden(_)) => record.stored = false,
        Err(e) => return Err(e.into()),
    }
    Ok(record)
}

/// Most events buffered towards a slow SSE client before Ollama waits.
const SSE_BUFFER: usize = 256;

/// The SSE form of an AI review (see [`analyze`]).
#[allow(clippy::too_many_arguments)]
fn stream_review(
    state: ApiState,
    setup: AnalysisSetup,
    store: crate::store::Store,
    id: xencode_protocol::WorkspaceId,
    path: WorkspacePath,
    source: String,
    mut record: AnalysisRecord,
    model: Option<String>,
) -> Response {
    let (events, rx) = tokio::sync::mpsc::channel::<Event>(SSE_BUFFER);
    tokio::spawn(async move {
        let mut pending = record.clone();
        pending.analysis.ai.status = "pending".into();
        if let Ok(e) = Event::default().event("analysis").json_data(&pending) {
            let _ = events.send(e).await;
        }
        let (tokens, mut token_rx) = tokio::sync::mpsc::channel::<String>(SSE_BUFFER);
        let forward = async {
            while let Some(t) = token_rx.recv().await {
                if let Ok(e) = Event::default().event("token").json_data(&t) {
                    let _ = events.send(e).await;
                }
            }
        };
        let started = Instant::now();
        let ask = async {
            let out = review(
                &state,
                &setup,
                path.as_str(),
                &source,
                &record.analysis,
                model.as_deref(),
                Some(&tokens),
            )
            .await;
            drop(tokens);
            out
        };
        let ((ai, used), ()) = tokio::join!(ask, forward);
        with_review(&state, &mut record, ai, used, started);
        let done = match store_record(&store, id, &path, record).await {
            Ok(r) => Event::default().event("done").json_data(&r),
            Err(e) => Event::default().event("error").json_data(e.body()),
        };
        if let Ok(e) = done {
            let _ = events.send(e).await;
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub async fn analyses(State(state): State<ApiState>, WsId(id): WsId) -> Result<Response, ApiError> {
    let store = state.store()?;
    let mut analyses = store.analyses(id).await?;
    // Each marked stale or not against the file as it is now.
    for rec in &mut analyses {
        let current = match WorkspacePath::parse(&rec.path) {
            Ok(path) => store.get_file(id, path).await.ok(),
            Err(_) => None,
        };
        rec.stale = Some(
            current.is_none_or(|f| blake3::hash(&f.bytes).to_hex().as_str() != rec.content_hash),
        );
    }
    Ok(Json(AnalysisList { analyses }).into_response())
}

/// Originals up to this size are stored in the workspace beside their text:
/// one change must fit a sync frame (8 MiB).
const MAX_STORED_ORIGINAL: usize = 6 * 1024 * 1024;

/// `POST /api/v1/workspaces/{id}/documents`: a multipart form whose `file`
/// field is the document. Extracts it in the worker process, stores the
/// original (when small enough to sync) under `documents/NAME` and the
/// processed document in the workspace; answers the processed document.
pub async fn add_document(
    State(state): State<ApiState>,
    WsId(id): WsId,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let setup = state.analysis_setup().ok_or_else(ApiError::starting)?;
    let store = state.store()?.clone();
    let bad_form = |e: String| {
        ApiError::bad_request(
            "invalid_body",
            format!("expected a multipart form with the document in a `file` field: {e}"),
        )
    };
    let mut multipart = multipart.map_err(|e| bad_form(e.body_text()))?;
    let mut upload = None;
    let (mut want_ai, mut model) = (false, None);
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(&e))?
    {
        match field.name() {
            Some("ai") => {
                want_ai = field.text().await.map_err(|e| multipart_error(&e))?.trim() == "true";
                continue;
            }
            Some("model") => {
                let m = field.text().await.map_err(|e| multipart_error(&e))?;
                model = Some(m.trim().to_owned()).filter(|m| !m.is_empty());
                continue;
            }
            Some("file") => {}
            _ => continue,
        }
        let name = field
            .file_name()
            .and_then(|n| n.rsplit(['/', '\\']).next())
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| bad_form("the `file` field has no file name".into()))?;
        let bytes = field.bytes().await.map_err(|e| multipart_error(&e))?;
        upload = Some((name, bytes));
    }
    let (name, bytes) = upload.ok_or_else(|| bad_form("no `file` field".into()))?;
    let original = format!("documents/{name}");
    let original = parse_path(&original)?;
    // Unknown workspaces fail before any work is done.
    store.workspace(id).await?;
    let started = Instant::now();
    let result = worker::process(&setup.worker, &name, bytes.to_vec(), setup.limits).await;
    state
        .inner
        .metrics
        .analysis("document", started.elapsed().as_secs_f64());
    let mut doc = result.map_err(|e| {
        let status = |s: StatusCode, code: &'static str| ApiError::new(s, code, e.to_string());
        match &e {
            WorkerError::Unsupported(_) => status(StatusCode::BAD_REQUEST, "unsupported_document"),
            WorkerError::TooLarge { .. } => {
                status(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            WorkerError::Extraction(_) => {
                status(StatusCode::UNPROCESSABLE_ENTITY, "extraction_failed")
            }
            WorkerError::Timeout(_) => {
                status(StatusCode::UNPROCESSABLE_ENTITY, "extraction_timeout")
            }
            WorkerError::Crashed(_) => {
                status(StatusCode::UNPROCESSABLE_ENTITY, "extraction_crashed")
            }
            _ => ApiError::internal(&e),
        }
    })?;
    if want_ai {
        let (prompt, redacted) = ai::summary_prompt(&doc);
        if redacted > 0 {
            tracing::info!(redacted, "secrets redacted from the AI prompt");
        }
        let started = Instant::now();
        let (summary, _) = ask(&state, &setup, &prompt, model.as_deref(), None).await;
        let seconds = started.elapsed().as_secs_f64();
        state.inner.metrics.analysis("ai", seconds);
        state
            .inner
            .metrics
            .ollama("summary", &summary.status, seconds);
        doc.summary = Some(summary);
    }
    let now = now_ms();
    let stored = if bytes.len() <= MAX_STORED_ORIGINAL {
        store
            .put_file(id, original.clone(), bytes.to_vec(), now)
            .await?;
        Some(original.to_string())
    } else {
        doc.metadata.warnings.push(format!(
            "the original ({} bytes) is over {MAX_STORED_ORIGINAL} bytes, the most one change syncs; only its text is stored",
            bytes.len()
        ));
        None
    };
    store.put_document(id, doc.clone(), stored, now).await?;
    Ok((StatusCode::CREATED, Json(doc)).into_response())
}

fn multipart_error(e: &MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the document is over the size limit (analysis.max_document_bytes)",
        )
    } else {
        ApiError::bad_request(
            "invalid_body",
            format!("the multipart form is malformed: {}", e.body_text()),
        )
    }
}

/// `GET /api/v1/workspaces/{id}/documents`.
pub async fn documents(
    State(state): State<ApiState>,
    WsId(id): WsId,
) -> Result<Response, ApiError> {
    let documents = state.store()?.documents(id).await?;
    Ok(Json(DocumentList { documents }).into_response())
}

/// The AI part of an analysis: never an error, always a status.
async fn review(
    state: &ApiState,
    setup: &AnalysisSetup,
    path: &str,
    source: &str,
    analysis: &xencode_protocol::analysis::CodeAnalysis,
    requested: Option<&str>,
    tokens: Option<&tokio::sync::mpsc::Sender<String>>,
) -> (AiResult, Option<String>) {
    let (prompt, redacted) = ai::review_prompt(path, source, analysis);
    if redacted > 0 {
        tracing::info!(redacted, "secrets redacted from the AI prompt");
    }
    ask(state, setup, &prompt, requested, tokens).await
}

/// Asks the local Ollama: picks the model, answers from the cache when the
/// same prompt went to the same model version before, else generates (and
/// streams pieces to `tokens`, if given). Never an error: a status. Returns
/// the answer and, when there is one, the model's fingerprint
/// ([`ai::fingerprint`]) for provenance.
async fn ask(
    state: &ApiState,
    setup: &AnalysisSetup,
    prompt: &str,
    requested: Option<&str>,
    tokens: Option<&tokio::sync::mpsc::Sender<String>>,
) -> (AiResult, Option<String>) {
    let failed = |e: ai::AiError, model: Option<String>| {
        tracing::info!(error = %e, "no AI answer; the static results stand");
        (
            AiResult {
                status: e.to_string(),
                model,
                text: None,
            },
            None,
        )
    };
    let chosen = match setup.ollama.pick(requested, &setup.model_preferences).await {
        Ok(m) => m,
        Err(e) => return failed(e, None),
    };
    let model = chosen.name.clone();
    let digest = Some(ai::fingerprint(&chosen));
    let ok = |text: String| {
        (
            AiResult {
                status: "ok".into(),
                model: Some(model.clone()),
                text: Some(text),
            },
            digest.clone(),
        )
    };
    // The same prompt to the same model version: the stored answer.
    let key = ai::cache_key(&chosen, prompt);
    let store = state.store().ok();
    if let Some(store) = store
        && let Ok(Some(text)) = store.ai_cache_get(key).await
    {
        state.inner.metrics.ai_cache("hit");
        if let Some(tokens) = tokens {
            let _ = tokens.send(text.clone()).await;
        }
        return ok(text);
    }
    state.inner.metrics.ai_cache("miss");
    let answer = match tokens {
        Some(tokens) => setup.ollama.stream(&model, prompt, tokens).await,
        None => setup.ollama.generate(&model, prompt).await,
    };
    match answer {
        Ok(text) => {
            if let Some(store) = store
                && let Err(e) = store.ai_cache_put(key, text.clone()).await
            {
                tracing::warn!(error = %e, "the AI answer could not be cached");
            }
            ok(text)
        }
        Err(e) => failed(e, Some(model)),
    }
}

/// `GET /api/v1/models`: the local Ollama's models and the default choice.
pub async fn models(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let setup = state.analysis_setup().ok_or_else(ApiError::starting)?;
    let host = setup.ollama.url().to_owned();
    let list = match setup.ollama.models().await {
        Ok(models) => ModelList {
            host,
            status: "ok".into(),
            default_model: ai::default_model(&models, &setup.model_preferences),
            models: models
                .into_iter()
                .map(|m| ModelEntry {
                    name: m.name,
                    size_bytes: m.size_bytes,
                })
                .collect(),
        },
        Err(e) => ModelList {
            host,
            status: e.to_string(),
            models: Vec::new(),
            default_model: None,
        },
    };
    Ok(Json(list).into_response())
}
