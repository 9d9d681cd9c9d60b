//! Dashboard login without passwords: `xencode dashboard` asks for a one-time
//! login URL (bearer-authenticated); opening it sets an HttpOnly,
//! SameSite=Strict session cookie. Cookie-authenticated requests that change
//! state must also carry the session's CSRF token in `X-CSRF-Token`.
//!
//! Codes and sessions live in memory only (a restart logs the browser out)
//! and only their blake3 hashes are kept, so a memory dump shows no usable
//! secret. Both tables are bounded.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use xencode_protocol::api::{LoginLink, SessionInfo};

use super::{ApiError, ApiState};

/// How long a login URL works.
pub const LOGIN_CODE_TTL: Duration = Duration::from_secs(120);
/// How long a dashboard session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most unused login codes kept; the oldest goes first.
const MAX_CODES: usize = 16;
/// Most live sessions kept; the least recently used goes first.
const MAX_SESSIONS: usize = 64;
/// The header carrying the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Who a request is authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The bearer API token (the CLI, scripts).
    Token,
    /// A dashboard session; the first 8 hex digits of its hash name it in
    /// logs and the audit log.
    Session(String),
}

impl Principal {
    /// How the audit log names it.
    pub fn label(&self) -> String {
        match self {
            Self::Token => "local:api-token".into(),
            Self::Session(id) => format!("local:dashboard:{id}"),
        }
    }
}

#[derive(Debug)]
struct Session {
    csrf: String,
    expires: Instant,
    last_used: Instant,
}

/// The login codes and sessions of one node.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    /// hash(code) -> expiry.
    codes: HashMap<[u8; 32], Instant>,
    /// hash(session id) -> session.
    sessions: HashMap<[u8; 32], Session>,
}

/// Why a cookie did not authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CookieCheck {
    Valid,
    Unknown,
    MissingCsrf,
    WrongCsrf,
}

fn hash(secret: &str) -> [u8; 32] {
    *blake3::hash(secret.as_bytes()).as_bytes()
}

fn random_secret() -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    crate::identity::random_fill(&mut bytes).map_err(|e| {
        tracing::error!(error = %e, "no randomness for a login code");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the OS random source failed; see the node's log",
        )
    })?;
    Ok(hex::encode(bytes))
}

impl Sessions {
    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // A panic while holding the lock leaves plain maps: still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Mints a one-time login code.
    pub fn new_code(&self) -> Result<String, ApiError> {
        let code = random_secret()?;
        let now = Instant::now();
        let mut t = self.tables();
        t.codes.retain(|_, expires| *expires > now);
        while t.codes.len() >= MAX_CODES {
            let Some(oldest) = t.codes.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k) else {
                break;
            };
            t.codes.remove(&oldest);
        }
        t.codes.insert(hash(&code), now + LOGIN_CODE_TTL);
        Ok(code)
    }

    /// Spends a login code; returns a new session id, or `None` if the code
    /// is unknown, used or expired.
    pub fn redeem(&self, code: &str) -> Result<Option<String>, ApiError> {
        let now = Instant::now();
        let mut t = self.tables();
        match t.codes.remove(&hash(code)) {
            Some(expires) if expires > now => {}
            _ => return Ok(None),
        }
        let id = random_secret()?;
        let csrf = random_secret()?;
        t.sessions.retain(|_, s| s.expires > now);
        while t.sessions.len() >= MAX_SESSIONS {
            let Some(lru) = t
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k)
            else {
                break;
            };
            t.sessions.remove(&lru);
        }
        t.sessions.insert(
            hash(&id),
            Session {
                csrf,
                expires: now + SESSION_TTL,
                last_used: now,
            },
        );
        Ok(Some(id))
    }

    /// Checks a session cookie, and for a state-changing request its CSRF
    /// token.
    pub fn check(&self, id: &str, csrf: Option<&str>, changes_state: bool) -> CookieCheck {
        let now = Instant::now();
        let mut t = self.tables();
        let key = hash(id);
        let Some(session) = t.sessions.get_mut(&key) else {
            return CookieCheck::Unknown;
        };
        if session.expires <= now {
            t.sessions.remove(&key);
            return CookieCheck::Unknown;
        }
        session.last_used = now;
        if !changes_state {
            return CookieCheck::Valid;
        }
        match csrf {
            None => CookieCheck::MissingCsrf,
            Some(c) if constant_time_eq(c.as_bytes(), session.csrf.as_bytes()) => {
                CookieCheck::Valid
            }
            Some(_) => CookieCheck::WrongCsrf,
        }
    }

    fn csrf_of(&self, id: &str) -> Option<String> {
        self.tables()
            .sessions
            .get(&hash(id))
            .map(|s| s.csrf.clone())
    }

    fn end(&self, id: &str) {
        self.tables().sessions.remove(&hash(id));
    }
}

/// The cookie's name: per port, so two nodes on one machine do not log each
/// other's browser out (cookies ignore ports).
pub fn cookie_name(port: u16) -> String {
    format!("xencode_session_{port}")
}

/// The session id in the request's cookie, if any.
pub fn session_cookie(headers: &HeaderMap, port: u16) -> Option<String> {
    let name = cookie_name(port);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// `POST /api/v1/dashboard/login` (bearer token only, enforced by the router).
pub async fn login_link(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let code = state.inner.sessions.new_code()?;
    let link = LoginLink {
        url: format!("{}/login?code={code}", state.inner.node.api_url),
        expires_in_secs: LOGIN_CODE_TTL.as_secs(),
    };
    Ok((StatusCode::CREATED, Json(link)).into_response())
}

/// `GET /login?code=...`: spends the code, sets the session cookie and sends
/// the browser to the dashboard.
pub async fn login(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let code = query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .find_map(|p| p.strip_prefix("code="))
        .unwrap_or_default();
    let id = match state.inner.sessions.redeem(code) {
        Ok(Some(id)) => id,
        Ok(None) => {
            tracing::warn!("refused a login URL that is unknown, used or expired");
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "login_link_invalid",
                "this login link is unknown, expired or already used; run `xencode dashboard` for a new one",
            )
            .into_response();
            // A browser (the usual visitor) gets a page saying what to do;
            // a script keeps the JSON error. The audit code stays on both.
            let wants_html = headers
                .get(axum::http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|a| a.contains("text/html"));
            if wants_html {
                let (mut parts, _) = resp.into_parts();
                parts.headers.insert(
                    axum::http::header::CONTENT_TYPE,
                    axum::http::HeaderValue::from_static("text/html; charset=utf-8"),
                );
                parts.headers.insert(
                    axum::http::header::CONTENT_SECURITY_POLICY,
                    axum::http::HeaderValue::from_static(xencode_web::CONTENT_SECURITY_POLICY),
                );
                resp = Response::from_parts(
                    parts,
                    axum::body::Body::from(xencode_web::LOGIN_FAILED_HTML),
                );
            }
            return resp;
        }
        Err(e) => return e.into_response(),
    };
    let cookie = format!(
        "{}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        cookie_name(state.inner.node.port),
        SESSION_TTL.as_secs()
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/".to_owned()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (header::REFERRER_POLICY, "no-referrer".to_owned()),
        ],
    )
        .into_response()
}

/// `GET /api/v1/session`: how the caller is authenticated, and its CSRF token.
pub async fn session_info(
    State(state): State<ApiState>,
    headers: HeaderMap,
    principal: Option<axum::Extension<Principal>>,
) -> Json<SessionInfo> {
    let cookie = matches!(principal.as_deref(), Some(Principal::Session(_)));
    let csrf = if cookie {
        session_cookie(&headers, state.inner.node.port)
            .and_then(|id| state.inner.sessions.csrf_of(&id))
    } else {
        None
    };
    Json(SessionInfo {
        auth: if cookie { "cookie" } else { "token" }.into(),
        csrf_token: csrf,
        peer_id: state.inner.node.peer_id.clone(),
    })
}

/// `DELETE /api/v1/session`: logs a dashboard session out.
pub async fn logout(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let port = state.inner.node.port;
    if let Some(id) = session_cookie(&headers, port) {
        state.inner.sessions.end(&id);
    }
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            format!(
                "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
                cookie_name(port)
            ),
        )],
    )
        .into_response()
}

/// Whether two secrets are equal, in time that does not depend on where
/// they differ.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_works_once() {
        let s = Sessions::default();
        let code = s.new_code().expect("code");
        let id = s.redeem(&code).expect("redeem").expect("first use");
        assert_eq!(s.redeem(&code).expect("redeem"), None, "replayed");
        assert_eq!(s.check(&id, None, false), CookieCheck::Valid);
        assert_eq!(s.check(&id, None, true), CookieCheck::MissingCsrf);
        assert_eq!(s.check(&id, Some("nope"), true), CookieCheck::WrongCsrf);
        let csrf = s.csrf_of(&id).expect("csrf");
        assert_eq!(s.check(&id, Some(&csrf), true), CookieCheck::Valid);
        assert_eq!(s.check("someone-else", None, false), CookieCheck::Unknown);
        s.end(&id);
        assert_eq!(s.check(&id, None, false), CookieCheck::Unknown);
    }

    #[test]
    fn tables_stay_bounded() {
        let s = Sessions::default();
        let codes: Vec<String> = (0..MAX_CODES * 2)
            .map(|_| s.new_code().expect("code"))
            .collect();
        assert!(s.tables().codes.len() <= MAX_CODES);
        let newest = codes.last().expect("codes");
        assert!(s.redeem(newest).expect("redeem").is_some());
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=b; xencode_session_7420=abc; xencode_session_7421=zzz"
                .parse()
                .expect("header"),
        );
        assert_eq!(session_cookie(&h, 7420).as_deref(), Some("abc"));
        assert_eq!(session_cookie(&h, 9), None);
    }
}
