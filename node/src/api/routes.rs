//! Route handlers. Each validates its input, asks the store, and answers JSON
//! (or a file's raw bytes).

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use xencode_protocol::api::{
    AuditLog, CreateWorkspace, FileKind, FileList, Health, InviteRequest, JoinRequest, NodeInfo,
    PeerList, RenameWorkspace, RevokeRequest, SpliceRequest, StoreInfo, WorkspaceList,
    WorkspaceRemoved, WorkspaceSummary,
};

use super::extract::{
    ApiJson, ApiPath, RawBody, WsFile, WsId, parse_ws, percent_decode, query_pairs,
};
use super::{ApiError, ApiState};
use crate::now_ms;
use crate::store::tables::SCHEMA_VERSION;

pub async fn health(State(state): State<ApiState>) -> Response {
    let (status, word) = if state.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    };
    (
        status,
        Json(Health {
            status: word.into(),
        }),
    )
        .into_response()
}

pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                xencode_web::CONTENT_SECURITY_POLICY,
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        Html(xencode_web::INDEX_HTML),
    )
        .into_response()
}

/// `GET /assets/{name}`: the dashboard's script and style sheet.
pub async fn asset(ApiPath(name): ApiPath<String>) -> Response {
    let Some((content_type, body)) = xencode_web::asset(&name) else {
        return not_found().await.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                xencode_web::CONTENT_SECURITY_POLICY,
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /api/v1/openapi.json`.
pub async fn openapi(State(state): State<ApiState>) -> Response {
    match state.inner.openapi.get() {
        Some(doc) => Json(doc.as_ref().clone()).into_response(),
        None => ApiError::starting().into_response(),
    }
}

pub async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.inner.metrics.render(),
    )
        .into_response()
}

pub async fn node_info(State(state): State<ApiState>) -> Result<Json<NodeInfo>, ApiError> {
    let store = state.store()?;
    let n = &state.inner.node;
    let stats = store.stats();
    use std::sync::atomic::Ordering::Relaxed;
    Ok(Json(NodeInfo {
        peer_id: n.peer_id.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        commit: env!("BUILT_FROM_COMMIT").into(),
        protocol: xencode_protocol::wire::SYNC_PROTOCOL.into(),
        api_url: n.api_url.clone(),
        data_dir: n.data_dir.clone(),
        listen: {
            let bound = state.listen_addrs();
            if bound.is_empty() {
                n.listen.clone()
            } else {
                bound
            }
        },
        mdns: n.mdns,
        reachability: state.reachability(),
        epoch: stats.epoch.load(Relaxed),
        workspaces: stats.workspaces.load(Relaxed),
        uptime_secs: state.inner.started.elapsed().as_secs(),
        store: StoreInfo {
            path: store.path().display().to_string(),
            size_bytes: stats.file_size.load(Relaxed),
            schema_version: SCHEMA_VERSION,
        },
        limits: xencode_protocol::api::NodeLimits {
            max_body_bytes: state.inner.max_body as u64,
            max_document_bytes: state.analysis_setup().map_or(0, |a| a.limits.max_bytes),
        },
    }))
}

pub async fn list_workspaces(
    State(state): State<ApiState>,
) -> Result<Json<WorkspaceList>, ApiError> {
    let workspaces = state.store()?.list_workspaces().await?;
    Ok(Json(WorkspaceList { workspaces }))
}

pub async fn create_workspace(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<CreateWorkspace>,
) -> Result<Response, ApiError> {
    let ws = state.store()?.create_workspace(req.name, now_ms()).await?;
    Ok((StatusCode::CREATED, Json(ws)).into_response())
}

pub async fn rename_workspace(
    State(state): State<ApiState>,
    WsId(id): WsId,
    ApiJson(req): ApiJson<RenameWorkspace>,
) -> Result<Json<WorkspaceSummary>, ApiError> {
    Ok(Json(
        state
            .store()?
            .rename_workspace(id, req.name, now_ms())
            .await?,
    ))
}

/// Forgets the workspace on this node: its folders are unlinked (files
/// stay), then its history is deleted from the store.
pub async fn remove_workspace(
    State(state): State<ApiState>,
    WsId(id): WsId,
) -> Result<Json<WorkspaceRemoved>, ApiError> {
    let store = state.store()?;
    // Unknown ids fail here, before any folder is touched.
    store.workspace(id).await?;
    let unlinked = state.folders()?.unlink_workspace(id).await?;
    let mut removed = store.remove_workspace(id).await?;
    removed.folders_unlinked += unlinked;
    Ok(Json(removed))
}

pub async fn show_workspace(
    State(state): State<ApiState>,
    WsId(id): WsId,
) -> Result<Response, ApiError> {
    Ok(Json(state.store()?.workspace(id).await?).into_response())
}

pub async fn list_files(
    State(state): State<ApiState>,
    WsId(id): WsId,
) -> Result<Json<FileList>, ApiError> {
    let files = state.store()?.list_files(id).await?;
    Ok(Json(FileList { files }))
}

pub async fn get_file(
    State(state): State<ApiState>,
    WsFile(id, path): WsFile,
) -> Result<Response, ApiError> {
    let file = state.store()?.get_file(id, path).await?;
    let (content_type, kind) = match file.kind {
        FileKind::Text => ("text/plain; charset=utf-8", "text"),
        FileKind::Binary => ("application/octet-stream", "binary"),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::HeaderName::from_static("x-xencode-file-kind"), kind),
        ],
        file.bytes,
    )
        .into_response())
}

pub async fn put_file(
    State(state): State<ApiState>,
    WsFile(id, path): WsFile,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let info = state
        .store()?
        .put_file(id, path, body.to_vec(), now_ms())
        .await?;
    Ok(Json(info).into_response())
}

/// The root key an imported document's text is read from, unless `field`
/// says otherwise.
pub const DEFAULT_IMPORT_FIELD: &str = "text";

/// `PUT /api/v1/workspaces/{id}/automerge/{*path}[?field=KEY]`: a document
/// made by another Automerge application becomes the new file `path`, with
/// its history.
pub async fn import_automerge(
    State(state): State<ApiState>,
    WsFile(id, path): WsFile,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let mut field = DEFAULT_IMPORT_FIELD.to_owned();
    for (_, value) in query_pairs(query.as_deref(), &["field"])? {
        field = percent_decode(value)
            .filter(|f| !f.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request("invalid_query", "`field` must be a URL-encoded root key")
            })?;
    }
    let imported = state
        .store()?
        .import_file(id, path, body.to_vec(), field, now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(imported)).into_response())
}

/// `GET /api/v1/workspaces/{id}/automerge/{*path}`: the file's Automerge
/// document, saved, for other Automerge applications.
pub async fn export_automerge(
    State(state): State<ApiState>,
    WsFile(id, path): WsFile,
) -> Result<Response, ApiError> {
    let bytes = state.store()?.export_file(id, path).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        bytes,
    )
        .into_response())
}

pub async fn remove_file(
    State(state): State<ApiState>,
    WsFile(id, path): WsFile,
) -> Result<StatusCode, ApiError> {
    state.store()?.remove_file(id, path, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A document's heads are few (one per concurrent writer); more is not a
/// version of it.
pub(super) const MAX_BASE_HEADS: usize = 256;

pub async fn splice(
    State(state): State<ApiState>,
    WsId(id): WsId,
    ApiJson(req): ApiJson<SpliceRequest>,
) -> Result<Response, ApiError> {
    let base = match &req.base {
        Some(heads) => Some(
            heads
                .iter()
                .map(|h| h.parse::<automerge::ChangeHash>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| {
                    ApiError::bad_request("invalid_splice", "`base` holds a malformed change hash")
                })?,
        ),
        None => None,
    };
    if base.as_ref().is_some_and(|b| b.len() > MAX_BASE_HEADS) {
        return Err(ApiError::bad_request(
            "invalid_splice",
            format!("`base` has more than {MAX_BASE_HEADS} heads"),
        ));
    }
    let (path, edits) = req
        .into_edits()
        .map_err(|m| ApiError::bad_request("invalid_splice", m))?;
    let resp = state
        .store()?
        .splice(id, path, base, edits, now_ms())
        .await?;
    Ok(Json(resp).into_response())
}

pub async fn invite(
    State(state): State<ApiState>,
    WsId(id): WsId,
    ApiJson(req): ApiJson<InviteRequest>,
) -> Result<Response, ApiError> {
    let addrs = state.listen_addrs();
    let resp = state.store()?.invite(id, req, addrs, now_ms()).await?;
    Ok((StatusCode::CREATED, Json(resp)).into_response())
}

pub async fn join(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<JoinRequest>,
) -> Result<Response, ApiError> {
    let ws = state.store()?.join(req.token, now_ms()).await?;
    Ok((StatusCode::CREATED, Json(ws)).into_response())
}

pub async fn revoke(
    State(state): State<ApiState>,
    WsId(id): WsId,
    ApiJson(req): ApiJson<RevokeRequest>,
) -> Result<Response, ApiError> {
    let target = req.target.clone();
    state.store()?.revoke(id, req.target, now_ms()).await?;
    Ok(Json(serde_json::json!({ "revoked": target })).into_response())
}

/// `GET /api/v1/audit[?workspace=ID][&limit=N]`: the audit log as this
/// node's user may see it, with the chain verified.
pub async fn audit(
    State(state): State<ApiState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Json<AuditLog>, ApiError> {
    let mut workspace = None;
    let mut limit = 200usize;
    let mut denied_only = false;
    for (key, value) in query_pairs(query.as_deref(), &["workspace", "limit", "decision"])? {
        if key == "workspace" {
            workspace = Some(parse_ws(value)?);
        } else if key == "decision" {
            denied_only = match value {
                "deny" => true,
                "any" => false,
                _ => {
                    return Err(ApiError::bad_request(
                        "invalid_query",
                        "`decision` must be `deny` or `any`",
                    ));
                }
            };
        } else {
            limit = value
                .parse()
                .ok()
                .filter(|n| *n <= MAX_AUDIT_LIMIT)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_query",
                        format!("`limit` must be a number up to {MAX_AUDIT_LIMIT}"),
                    )
                })?;
        }
    }
    let store = state.store()?;
    // What strangers were refused up to now, this minute included.
    let pending = state.inner.refusals.take();
    if !pending.is_empty() {
        store.audit_refusals(pending).await;
    }
    Ok(Json(store.read_audit(workspace, limit, denied_only).await?))
}

/// `GET /api/v1/backup` (API token only, enforced by the router): a consistent snapshot of the
/// store, streamed as a redb file. The node keeps serving meanwhile.
pub async fn backup(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let store = state.store()?;
    let dir = store
        .path()
        .parent()
        .map(std::path::Path::to_owned)
        .unwrap_or_default();
    let mut nonce = [0u8; 8];
    crate::identity::random_fill(&mut nonce).map_err(ApiError::internal)?;
    let tmp = dir.join(format!(".backup-{}.redb.tmp", hex::encode(nonce)));
    let info = store.backup(tmp.clone(), now_ms()).await?;
    let file = tokio::fs::File::open(&tmp)
        .await
        .map_err(ApiError::internal);
    // The open handle keeps the data readable; the name goes now.
    let _ = tokio::fs::remove_file(&tmp).await;
    let file = file?;
    let stream = futures::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    });
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, info.bytes.to_string()),
            (
                header::HeaderName::from_static("x-xencode-workspaces"),
                info.workspaces.to_string(),
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// Most audit entries one request returns.
const MAX_AUDIT_LIMIT: usize = 100_000;

pub async fn peers(State(state): State<ApiState>) -> Result<Json<PeerList>, ApiError> {
    let mut peers = state.store()?.peers().await?;
    let links = state.links();
    for p in &mut peers {
        let Some(link) = p.peer_id.parse().ok().and_then(|id| links.get(&id)) else {
            continue;
        };
        p.connection = Some(link.kind);
        p.relay = link.relay.map(|r| r.to_string());
        p.rtt_us = link
            .rtt
            .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
    Ok(Json(PeerList { peers }))
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see docs/api.md",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see docs/api.md",
    )
}
