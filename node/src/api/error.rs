//! The API's one error type: user mistakes get their own status and message;
//! internal failures are logged and answered without internals.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use xencode_protocol::api::{ErrorBody, ErrorDetail};

use crate::store::StoreError;
use crate::workspace::WorkspaceError;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn starting() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            "the node is still loading its store; retry in a moment",
        )
    }

    /// An internal failure: the details go to the log, not to the client.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error answering an API request");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the node hit an internal error; details are in its log",
        )
    }
}

impl ApiError {
    /// The `{error: {code, message}}` body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.clone(),
            },
        }
    }
}

/// The error code of an error answer, kept on the response for the audit
/// log.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut resp = (self.status, Json(body)).into_response();
        resp.extensions_mut().insert(ErrorCode(self.code));
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let msg = e.to_string();
        match e {
            StoreError::WorkspaceNotFound(_) => Self::new(
                StatusCode::NOT_FOUND,
                "workspace_not_found",
                format!("{msg}; list them with `xencode workspace list`"),
            ),
            StoreError::InvalidName(_) => Self::bad_request("invalid_name", msg),
            StoreError::NameTaken { .. } => Self::new(StatusCode::CONFLICT, "name_taken", msg),
            StoreError::Workspace(WorkspaceError::FileNotFound(_)) => {
                Self::new(StatusCode::NOT_FOUND, "file_not_found", msg)
            }
            StoreError::Workspace(WorkspaceError::FileExists(_)) => {
                Self::new(StatusCode::CONFLICT, "file_exists", msg)
            }
            StoreError::Workspace(WorkspaceError::NotText(_)) => {
                Self::new(StatusCode::CONFLICT, "not_text", msg)
            }
            StoreError::Workspace(WorkspaceError::OutOfRange { .. }) => {
                Self::bad_request("out_of_range", msg)
            }
            StoreError::Workspace(WorkspaceError::UnknownBase(_)) => {
                Self::new(StatusCode::CONFLICT, "unknown_base", msg)
            }
            StoreError::Import(e) => {
                use crate::workspace::interop::ImportError;
                let (status, code) = match e {
                    ImportError::Chunks(xencode_protocol::chunks::ChunkError::TooLarge {
                        ..
                    })
                    | ImportError::TooManyChanges { .. } => {
                        (StatusCode::PAYLOAD_TOO_LARGE, "document_too_large")
                    }
                    ImportError::TooLong { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "text_too_long"),
                    ImportError::NoText { .. } => (StatusCode::BAD_REQUEST, "no_text"),
                    ImportError::Chunks(_) | ImportError::Load(_) => {
                        (StatusCode::BAD_REQUEST, "not_automerge")
                    }
                };
                Self::new(status, code, msg)
            }
            StoreError::DiskFull => Self::new(StatusCode::INSUFFICIENT_STORAGE, "disk_full", msg),
            StoreError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the node is shutting down",
            ),
            StoreError::Forbidden(_) => Self::new(StatusCode::FORBIDDEN, "forbidden", msg),
            StoreError::InvalidInvitation(_) => Self::bad_request("invalid_invitation", msg),
            StoreError::InvalidRequest(_) => Self::bad_request("invalid_request", msg),
            StoreError::Workspace(_)
            | StoreError::Storage(_)
            | StoreError::DatabaseClosed
            | StoreError::Encoding(_)
            | StoreError::Audit(_)
            | StoreError::Random(_)
            | StoreError::Minted(_)
            | StoreError::Backup(_) => Self::internal(msg),
        }
    }
}
