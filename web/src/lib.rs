//! Xencode's dashboard assets, embedded into the node binary so the dashboard
//! works offline and needs no CDN.
//!
//! For now this is a status page: it shows whether the node's store is loaded
//! (`/health`, which needs no token) and how to use the CLI. Nothing on the
//! page loads from another origin.

/// The dashboard's HTML page, served at `/`.
pub const INDEX_HTML: &str = include_str!("../assets/index.html");

/// The Content-Security-Policy the page is served with: everything from this
/// origin only.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_nothing_from_other_origins() {
        assert!(INDEX_HTML.contains("<title>Xencode</title>"));
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
    }
}
