//! `/api/v1/folders`: link, list, unlink and revert folders
//! (`crate::folder`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use xencode_protocol::api::{
    EditorLease, EditorSession, FolderList, FolderOutcome, FolderRequest, LinkFolder, Presence,
};

use super::ApiState;
use super::error::ApiError;
use super::extract::{ApiJson, WsId};
use crate::folder::FolderError;

impl From<FolderError> for ApiError {
    fn from(e: FolderError) -> Self {
        let msg = e.to_string();
        match e {
            FolderError::Store(s) => s.into(),
            FolderError::NotLinked(_) => Self::new(StatusCode::NOT_FOUND, "folder_not_found", msg),
            FolderError::NotReceiveOnly(_) => {
                Self::new(StatusCode::CONFLICT, "not_receive_only", msg)
            }
            FolderError::Stopped => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "folder_stopped", msg)
            }
            FolderError::NotAbsolute(_)
            | FolderError::NotADirectory(_)
            | FolderError::DataDir { .. }
            | FolderError::Io { .. } => Self::bad_request("invalid_folder", msg),
        }
    }
}

pub async fn list(State(state): State<ApiState>) -> Result<Json<FolderList>, ApiError> {
    Ok(Json(FolderList {
        folders: state.folders()?.list().await,
    }))
}

pub async fn link(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<LinkFolder>,
) -> Result<Response, ApiError> {
    let info = state
        .folders()?
        .link(&req.dir, req.workspace, req.name)
        .await?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

pub async fn unlink(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<FolderRequest>,
) -> Result<Json<FolderOutcome>, ApiError> {
    Ok(Json(state.folders()?.unlink(&req.dir).await?))
}

pub async fn revert(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<FolderRequest>,
) -> Result<Json<FolderOutcome>, ApiError> {
    Ok(Json(state.folders()?.revert(&req.dir).await?))
}

pub async fn editors(
    State(state): State<ApiState>,
    WsId(id): WsId,
    ApiJson(req): ApiJson<EditorSession>,
) -> Result<Json<EditorLease>, ApiError> {
    let bad = |m: &str| ApiError::bad_request("invalid_editor_session", m.to_owned());
    if req.session.is_empty() || req.session.len() > 64 {
        return Err(bad("`session` must be 1 to 64 characters"));
    }
    if req.saves.len() > crate::folder::editors::MAX_OPEN {
        return Err(bad("too many saves in one request"));
    }
    let hash = |h: &str| -> Result<[u8; 32], ApiError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(h, &mut out).map_err(|_| bad("a hash is not 64 hex digits"))?;
        Ok(out)
    };
    let heads = |list: &[String]| -> Result<Vec<[u8; 32]>, ApiError> {
        if list.len() > super::routes::MAX_BASE_HEADS {
            return Err(bad("too many heads"));
        }
        list.iter().map(|h| hash(h)).collect()
    };
    if req.cursors.len() > crate::folder::editors::MAX_OPEN {
        return Err(bad("too many cursors in one request"));
    }
    let mut saves = Vec::with_capacity(req.saves.len());
    for s in &req.saves {
        let save = crate::folder::editors::Save {
            hash: hash(&s.hash)?,
            heads: heads(&s.heads)?,
        };
        saves.push((s.path.to_string(), save));
    }
    let mut cursors = Vec::with_capacity(req.cursors.len());
    for c in &req.cursors {
        let cursor = crate::folder::editors::Cursor {
            offset: c.offset,
            heads: heads(&c.heads)?,
        };
        cursors.push((c.path.to_string(), cursor));
    }
    // The workspace must be ours (the same answer as every other route).
    let store = state.store()?;
    store.workspace(id).await?;
    let open: std::collections::BTreeSet<String> =
        req.open.iter().map(ToString::to_string).collect();
    let lease = state
        .folders()?
        .editing(&req.session, id, open.clone(), saves, cursors)
        .await
        .map_err(|e| bad(&e.to_string()))?;
    let teammates = store
        .presence(id)
        .await?
        .into_iter()
        .filter(|t| open.contains(t.path.as_str()))
        .collect();
    Ok(Json(EditorLease {
        lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
        teammates,
    }))
}

/// `GET /api/v1/workspaces/{id}/presence`: teammates with files open.
pub async fn presence(
    State(state): State<ApiState>,
    WsId(id): WsId,
) -> Result<Json<Presence>, ApiError> {
    let teammates = state.store()?.presence(id).await?;
    Ok(Json(Presence { teammates }))
}
