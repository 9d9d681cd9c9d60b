//! Extractors whose rejections are [`ApiError`]s (JSON bodies with fitting
//! statuses) instead of axum's plain-text ones.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use xencode_protocol::{WorkspaceId, WorkspacePath};

use super::ApiError;

/// The `key=value` pairs of a query string, refusing any key not in
/// `known` with a clear `invalid_query` error.
pub fn query_pairs<'a>(
    query: Option<&'a str>,
    known: &[&str],
) -> Result<Vec<(&'a str, &'a str)>, ApiError> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if known.contains(&k) => Ok((k, v)),
            _ => Err(ApiError::bad_request(
                "invalid_query",
                format!(
                    "unknown query parameter {pair:?}; this route understands {}",
                    known
                        .iter()
                        .map(|k| format!("`{k}=…`"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            )),
        })
        .collect()
}

/// A query value with its `%XX` escapes (and `+` for space) decoded;
/// `None` if an escape is malformed or the result is not UTF-8.
pub fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A JSON body.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(JsonRejection::BytesRejection(e)) => Err(body_error(e)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            )),
            Err(e) => Err(ApiError::bad_request("invalid_json", e.body_text())),
        }
    }
}

/// A raw body (a file's bytes).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(body_error)
    }
}

fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than the node accepts (api.max_body_bytes in config.toml)",
        )
    } else {
        ApiError::bad_request("invalid_body", "the request body could not be read")
    }
}

/// Path parameters.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| Self(v))
            .map_err(|e: PathRejection| ApiError::bad_request("invalid_path", e.body_text()))
    }
}

/// A workspace id from a request, or `invalid_workspace_id`.
pub(super) fn parse_ws(id: &str) -> Result<WorkspaceId, ApiError> {
    id.parse().map_err(|e| {
        ApiError::bad_request(
            "invalid_workspace_id",
            format!("{id:?} is not a workspace id: {e}"),
        )
    })
}

/// A workspace file path from a request, or `invalid_file_path`.
pub(super) fn parse_path(path: &str) -> Result<WorkspacePath, ApiError> {
    WorkspacePath::parse(path)
        .map_err(|e| ApiError::bad_request("invalid_file_path", format!("invalid file path: {e}")))
}

/// The workspace id of a `/workspaces/{id}…` route, parsed.
pub struct WsId(pub WorkspaceId);

impl<S: Send + Sync> FromRequestParts<S> for WsId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let ApiPath(id) = ApiPath::<String>::from_request_parts(parts, state).await?;
        parse_ws(&id).map(Self)
    }
}

/// The workspace id and file path of a `/workspaces/{id}/files/{*path}`
/// route, parsed.
pub struct WsFile(pub WorkspaceId, pub WorkspacePath);

impl<S: Send + Sync> FromRequestParts<S> for WsFile {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let ApiPath((id, path)) =
            ApiPath::<(String, String)>::from_request_parts(parts, state).await?;
        Ok(Self(parse_ws(&id)?, parse_path(&path)?))
    }
}

#[cfg(test)]
mod tests {
    use super::{percent_decode, query_pairs};

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("a%20b+c%C3%B6").as_deref(), Some("a b cö"));
        for bad in ["%", "%4", "%zz", "%ff"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn queries_keep_known_keys_and_refuse_others() {
        assert_eq!(query_pairs(None, &["a"]).expect("none"), vec![]);
        assert_eq!(
            query_pairs(Some("a=1&&b=2"), &["a", "b"]).expect("known"),
            vec![("a", "1"), ("b", "2")]
        );
        for bad in ["c=1", "a", "a=1&c=2"] {
            let e = query_pairs(Some(bad), &["a"]).expect_err(bad);
            assert_eq!(e.code, "invalid_query");
        }
    }
}
