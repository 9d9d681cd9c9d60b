//! Request guards: loopback Host and same-origin checks, the bearer token, and
//! per-route metrics.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ErrorCode;
use super::session::{self, CookieCheck, Principal, constant_time_eq};
use super::{ApiError, ApiState};

/// Names a browser may use to reach this API. Anything else in `Host` is a
/// DNS-rebinding attempt (a foreign name resolving to 127.0.0.1).
const LOOPBACK_HOSTS: &[&str] = &["127.0.0.1", "localhost", "[::1]"];

/// Refuses requests whose `Host` is not a loopback name, or whose `Origin` (if
/// any) is not this API's own origin.
pub async fn check_host_and_origin(
    State(state): State<ApiState>,
    req: Request,
    next: Next,
) -> Response {
    if let Err(e) = check_headers(req.headers(), state.inner.node.port) {
        return e.into_response();
    }
    next.run(req).await
}

fn check_headers(headers: &HeaderMap, port: u16) -> Result<(), ApiError> {
    let forbidden = |code, msg: String| Err(ApiError::new(StatusCode::FORBIDDEN, code, msg));
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !is_loopback_authority(host) {
        return forbidden(
            "forbidden_host",
            "the Host header must name this machine's loopback (127.0.0.1, localhost or [::1])"
                .into(),
        );
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .and_then(|authority| authority.rsplit_once(':'))
            .is_some_and(|(host, p)| {
                LOOPBACK_HOSTS.contains(&host) && p.parse::<u16>().ok() == Some(port)
            });
        if !ok {
            return forbidden(
                "forbidden_origin",
                format!(
                    "cross-origin requests are refused; only http://127.0.0.1:{port} may call this API from a browser"
                ),
            );
        }
    }
    Ok(())
}

/// `host` or `host:port` with a loopback host.
fn is_loopback_authority(authority: &str) -> bool {
    let host = match authority.rsplit_once(':') {
        // `[::1]` alone contains colons but ends with `]`.
        Some((h, port)) if !authority.ends_with(']') && port.parse::<u16>().is_ok() => h,
        _ => authority,
    };
    LOOPBACK_HOSTS.contains(&host)
}

/// Requires `Authorization: Bearer <api-token>`, or a dashboard session
/// cookie (plus its CSRF token on state-changing requests). Records who the
/// caller is as a [`Principal`] extension.
pub async fn require_token(
    State(state): State<ApiState>,
    mut req: Request,
    next: Next,
) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    let principal = match presented {
        Some(token) if constant_time_eq(token.as_bytes(), state.inner.token.as_bytes()) => {
            Principal::Token
        }
        Some(_) => {
            return unauthorized("the API token is wrong; use the one in <data-dir>/api-token");
        }
        None => match cookie_principal(&state, &req) {
            Ok(p) => p,
            Err(resp) => return *resp,
        },
    };
    tracing::debug!(who = %principal.label(), method = %req.method(), path = req.uri().path(), "authenticated");
    req.extensions_mut().insert(principal.clone());
    let mut resp = next.run(req).await;
    // For the audit log, outside this layer.
    resp.extensions_mut().insert(principal);
    resp
}

/// For routes documented as [`super::openapi::Auth::TokenOnly`] (minting
/// login links, backups): a dashboard session is not enough.
pub async fn token_only(req: Request, next: Next) -> Response {
    if req.extensions().get::<Principal>() == Some(&Principal::Token) {
        return next.run(req).await;
    }
    ApiError::new(
        StatusCode::FORBIDDEN,
        "token_required",
        "this needs the API token itself (as `xencode dashboard` and `xencode backup FILE` use it), not a browser session",
    )
    .into_response()
}

/// Authenticates a request by its dashboard session cookie.
fn cookie_principal(state: &ApiState, req: &Request) -> Result<Principal, Box<Response>> {
    let port = state.inner.node.port;
    let Some(id) = session::session_cookie(req.headers(), port) else {
        return Err(Box::new(unauthorized(
            "this request needs `Authorization: Bearer <token>` with the token from <data-dir>/api-token, or a dashboard session (run `xencode dashboard`)",
        )));
    };
    let changes_state = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let csrf = req
        .headers()
        .get(session::CSRF_HEADER)
        .and_then(|h| h.to_str().ok());
    let forbidden = |code, msg: &str| {
        Err(Box::new(
            ApiError::new(StatusCode::FORBIDDEN, code, msg).into_response(),
        ))
    };
    match state.inner.sessions.check(&id, csrf, changes_state) {
        CookieCheck::Valid => Ok(Principal::Session(hex::encode(
            &blake3::hash(id.as_bytes()).as_bytes()[..4],
        ))),
        CookieCheck::Unknown => Err(Box::new(unauthorized(
            "the dashboard session expired or the node restarted; run `xencode dashboard` to log in again",
        ))),
        CookieCheck::MissingCsrf => forbidden(
            "csrf_token_missing",
            "a dashboard request that changes state needs the X-CSRF-Token header from GET /api/v1/session",
        ),
        CookieCheck::WrongCsrf => forbidden(
            "csrf_token_wrong",
            "the X-CSRF-Token header does not match this session's; reload the dashboard",
        ),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"xencode\""),
    );
    resp
}

/// Appends the API's authorization decisions to the audit log: every
/// refusal (by the Host and Origin checks, the token, the CSRF check, or a
/// workspace role), every allowed request that changes state, and each
/// login. Allowed reads by this node's own user (API token or dashboard
/// session) are not logged: they are the owner looking at their own data,
/// and would bury what matters. Public assets and `/health` need no
/// decision; allowed metric scrapes are not logged, refused ones are. An
/// entry names what was asked for: the request's actual path (a file's
/// path, decoded), not the route's template.
pub async fn audit(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let method = method_label(req.method());
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    let workspace = workspace_in(req.uri().path());
    let target = readable_path(req.uri().path());
    let origin = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|o| o.to_str().ok())
        .unwrap_or("local")
        .to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    let denied = matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    let public = matches!(
        route.as_deref(),
        Some("/health" | "/" | "/assets/{name}") | None
    );
    let scrape = route.as_deref() == Some("/metrics");
    if (public || scrape) && !denied {
        return resp;
    }
    let Some(store) = state.inner.store.get() else {
        return resp;
    };
    let principal = resp.extensions().get::<Principal>();
    let login = route.as_deref() == Some("/login");
    if principal.is_none() && (!login || denied) {
        // A request that never authenticated: refused by a guard, or by the
        // router before any (an invented method). Anyone can cause these,
        // thousands a second: tallied, not logged one by one.
        let reason = resp
            .extensions()
            .get::<ErrorCode>()
            .map_or_else(|| format!("status {}", status.as_u16()), |c| c.0.to_owned());
        let done = state
            .inner
            .refusals
            .count(crate::now_ms(), &origin, &reason);
        if !done.is_empty() {
            store.audit_refusals(done).await;
        }
        return resp;
    }
    // A backup is a read, but one that takes everything away: logged.
    let backup = route.as_deref() == Some("/api/v1/backup");
    if reads && !denied && principal.is_some() && !backup {
        return resp;
    }
    let who = principal.map_or_else(|| "unauthenticated".to_owned(), Principal::label);
    let reason = match (resp.extensions().get::<ErrorCode>(), principal) {
        (Some(code), _) if denied => code.0.to_owned(),
        _ if denied => format!("status {}", status.as_u16()),
        (_, Some(Principal::Token)) => "api token".to_owned(),
        (_, Some(Principal::Session(_))) => "dashboard session".to_owned(),
        (_, None) => "login link redeemed".to_owned(),
    };
    store
        .audit(crate::store::audit::Decision {
            at_ms: crate::now_ms(),
            who,
            action: if route.is_some() {
                format!("{method} {target}")
            } else {
                format!("{method} (no route)")
            },
            workspace,
            allow: !denied,
            reason,
        })
        .await;
    resp
}

/// Longest request path an audit entry keeps (in characters).
const MAX_AUDITED_PATH: usize = 512;

/// A request path as a person reads it: percent-escapes decoded (invalid
/// UTF-8 replaced), control characters shown as `?`, cut at
/// [`MAX_AUDITED_PATH`] characters.
fn readable_path(path: &str) -> String {
    let raw = path.as_bytes();
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if raw[i] == b'%'
            && let (Some(h), Some(l)) = (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            )
        {
            bytes.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        bytes.push(raw[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(MAX_AUDITED_PATH)
        .collect();
    if text.chars().count() > MAX_AUDITED_PATH {
        out.push('…');
    }
    out
}

/// The workspace a request path names, if any.
fn workspace_in(path: &str) -> Option<xencode_protocol::WorkspaceId> {
    path.strip_prefix("/api/v1/workspaces/")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// Counts every request and its duration by matched route.
pub async fn record_metrics(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let resp = next.run(req).await;
    state.inner.metrics.api_request(
        &route,
        method,
        resp.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    resp
}

/// The metric label of a request method: the standard ones by name, any
/// other (invented by a client) as `other`, so that unauthenticated
/// requests cannot grow the label set.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audited_paths_are_decoded_and_bounded() {
        assert_eq!(
            readable_path("/api/v1/workspaces/x/files/src/caf%C3%A9%20menu.py"),
            "/api/v1/workspaces/x/files/src/café menu.py"
        );
        assert_eq!(readable_path("/a/%0Ab%ZZ%4"), "/a/?b%ZZ%4");
        assert_eq!(readable_path("/%FF"), "/\u{fffd}");
        let long = format!("/{}", "a".repeat(2000));
        assert_eq!(readable_path(&long).chars().count(), MAX_AUDITED_PATH + 1);
    }

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label(&Method::PUT), "PUT");
        for m in ["FOO", "BAR1", "TRACE", "CONNECT"] {
            let m = Method::from_bytes(m.as_bytes()).expect("method");
            assert_eq!(method_label(&m), "other");
        }
    }

    #[test]
    fn loopback_authorities() {
        for ok in [
            "127.0.0.1",
            "127.0.0.1:7420",
            "localhost:1",
            "[::1]",
            "[::1]:7420",
        ] {
            assert!(is_loopback_authority(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:7420",
            "127.0.0.1.evil.example",
            "",
            "localhost.:80",
            "10.0.0.1:7420",
            "[::2]:1",
        ] {
            assert!(!is_loopback_authority(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
