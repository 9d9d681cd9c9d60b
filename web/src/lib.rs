//! Xencode's dashboard assets, embedded into the node binary so the dashboard
//! works offline and needs no CDN.
//!
//! The page is plain HTML, CSS and JavaScript with no dependencies: an
//! overview of the node and its peers, workspaces with members, invitations,
//! files, documents and analyses, and a file view with live collaborative
//! editing (keystrokes go to the splice route, remote edits arrive over
//! `GET /api/v1/events`). Nothing on the page loads from another origin, and
//! it runs no inline script, so the CSP below forbids both.

/// The dashboard's HTML page, served at `/`.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");

/// The page a browser gets for a login link that is used, expired or
/// unknown (instead of the API's JSON error).
pub const LOGIN_FAILED_HTML: &str = include_str!("../assets/login-failed.html");

/// The dashboard's script, served at `/assets/app.js`.
pub const APP_JS: &str = include_str!("../assets/app.js");

/// The dashboard's style sheet, served at `/assets/app.css`.
pub const APP_CSS: &str = include_str!("../assets/app.css");

/// A static asset by its name under `/assets/`: `(content type, body)`.
pub fn asset(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
        "app.css" => Some(("text/css; charset=utf-8", APP_CSS)),
        _ => None,
    }
}

/// The Content-Security-Policy every dashboard response is served with:
/// everything from this origin only, no inline script.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_other_origins() {
        assert!(INDEX_HTML.contains("<title>Xencode</title>"));
        for text in [INDEX_HTML, APP_JS, APP_CSS, LOGIN_FAILED_HTML] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        assert!(!INDEX_HTML.contains("<script>"), "no inline script");
        assert!(!LOGIN_FAILED_HTML.contains("<script"), "no script at all");
    }

    #[test]
    fn the_page_never_writes_markup_from_data() {
        assert!(!APP_JS.contains("innerHTML") && !APP_JS.contains("insertAdjacentHTML"));
    }

    #[test]
    fn assets_are_found_by_name() {
        assert!(asset("app.js").is_some_and(|(t, _)| t.starts_with("text/javascript")));
        assert!(asset("../Cargo.toml").is_none());
    }
}
