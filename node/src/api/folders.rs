//! `/api/v1/folders`: link, list, unlink and revert folders
//! (`crate::folder`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use xencode_protocol::api::{FolderList, FolderOutcome, FolderRequest, LinkFolder};

use super::ApiState;
use super::error::ApiError;
use super::extract::ApiJson;
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
