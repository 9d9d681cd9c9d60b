//! The local HTTP API (axum): the contract of ARCHITECTURE section 7.
//!
//! Layers, outermost first: metrics, the Host/Origin guard (DNS rebinding and
//! CSRF defence), the body limit, then per route the bearer-token check.
//! Every error is `{"error": {"code", "message"}}`; internal failures are
//! logged and answered without their details.
//!
//! This module must never bind a non-loopback address nor answer a request
//! whose Host is not a loopback name.

mod analysis;
mod error;
mod events;
mod extract;
mod guard;
mod routes;
mod session;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};

pub use error::ApiError;

use crate::metrics::Metrics;
use crate::net::NetInfo;
use crate::store::Store;

/// Files whose parse is kept for incremental re-analysis.
const PARSE_CACHE_FILES: usize = 64;

/// What the API needs to answer; cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<Inner>,
}

struct Inner {
    store: OnceLock<Store>,
    net: OnceLock<Arc<NetInfo>>,
    token: String,
    metrics: Arc<Metrics>,
    node: NodeFacts,
    max_body: usize,
    started: Instant,
    /// The extraction worker program and the limits of analysis.
    analysis: OnceLock<AnalysisSetup>,
    /// Parses kept for incremental re-analysis of recently analysed files.
    parses: Arc<std::sync::Mutex<crate::analysis::code::ParseCache>>,
    /// Dashboard login codes and sessions.
    sessions: session::Sessions,
}

/// How documents are processed.
#[derive(Debug, Clone)]
pub struct AnalysisSetup {
    pub worker: std::path::PathBuf,
    pub limits: crate::analysis::worker::DocLimits,
    /// The local Ollama, and the models to prefer.
    pub ollama: crate::analysis::ai::Client,
    pub model_preferences: Vec<String>,
}

/// Static facts about the node shown by `GET /api/v1/node`.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    pub peer_id: String,
    pub data_dir: String,
    pub listen: Vec<String>,
    pub mdns: bool,
    /// The URL the API is reachable at (its bound address).
    pub api_url: String,
    /// The bound port: an `Origin` must name it.
    pub port: u16,
}

impl ApiState {
    /// State for an API whose store is attached later with [`Self::attach_store`].
    pub fn new(token: String, metrics: Arc<Metrics>, node: NodeFacts, max_body: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: OnceLock::new(),
                net: OnceLock::new(),
                token,
                metrics,
                node,
                max_body,
                started: Instant::now(),
                analysis: OnceLock::new(),
                parses: Arc::new(std::sync::Mutex::new(
                    crate::analysis::code::ParseCache::new(PARSE_CACHE_FILES),
                )),
                sessions: session::Sessions::default(),
            }),
        }
    }

    /// Makes the loaded store available; `/health` turns 200.
    pub fn attach_store(&self, store: Store) {
        if self.inner.store.set(store).is_err() {
            tracing::warn!("the store was attached twice; keeping the first");
        }
    }

    /// Sets the program run as the extraction worker (the `xencode` binary)
    /// and the analysis limits; without it, document routes answer 503.
    pub fn attach_analysis(&self, setup: AnalysisSetup) {
        let _ = self.inner.analysis.set(setup);
    }

    /// Makes the network's facts (listen addresses) available.
    pub fn attach_net(&self, info: Arc<NetInfo>) {
        let _ = self.inner.net.set(info);
    }

    /// Addresses peers can reach this node at, each ending in `/p2p/<id>`.
    fn listen_addrs(&self) -> Vec<String> {
        let id = &self.inner.node.peer_id;
        self.inner
            .net
            .get()
            .and_then(|n| n.listen.read().ok().map(|l| l.clone()))
            .unwrap_or_default()
            .into_iter()
            .map(|a| {
                if a.contains("/p2p/") {
                    a
                } else {
                    format!("{a}/p2p/{id}")
                }
            })
            .collect()
    }

    fn store(&self) -> Result<&Store, ApiError> {
        self.inner.store.get().ok_or_else(ApiError::starting)
    }
}

/// The documents route's body limit when no analysis setup is attached.
fn max_body_default() -> usize {
    50 * 1024 * 1024
}

/// The full router of the API and the dashboard page.
pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(routes::metrics))
        .route("/api/v1/node", get(routes::node_info))
        .route(
            "/api/v1/workspaces",
            get(routes::list_workspaces).post(routes::create_workspace),
        )
        .route("/api/v1/workspaces/{id}", get(routes::show_workspace))
        .route("/api/v1/workspaces/{id}/files", get(routes::list_files))
        .route(
            "/api/v1/workspaces/{id}/files/{*path}",
            get(routes::get_file)
                .put(routes::put_file)
                .delete(routes::remove_file),
        )
        .route("/api/v1/workspaces/{id}/splice", post(routes::splice))
        .route("/api/v1/workspaces/{id}/invites", post(routes::invite))
        .route("/api/v1/workspaces/{id}/revoke", post(routes::revoke))
        .route("/api/v1/workspaces/{id}/analyze", post(analysis::analyze))
        .route("/api/v1/workspaces/{id}/analyses", get(analysis::analyses))
        .route("/api/v1/models", get(analysis::models))
        .route(
            "/api/v1/workspaces/{id}/documents",
            get(analysis::documents)
                .post(analysis::add_document)
                .layer(DefaultBodyLimit::max(
                    state
                        .inner
                        .analysis
                        .get()
                        .map_or(max_body_default(), |a| {
                            usize::try_from(a.limits.max_bytes).unwrap_or(usize::MAX)
                        })
                        .saturating_add(64 * 1024),
                )),
        )
        .route("/api/v1/join", post(routes::join))
        .route("/api/v1/peers", get(routes::peers))
        .route("/api/v1/events", get(events::events))
        .route("/api/v1/audit", get(routes::audit))
        .route("/api/v1/backup", get(routes::backup))
        .route("/api/v1/dashboard/login", post(session::login_link))
        .route(
            "/api/v1/session",
            get(session::session_info).delete(session::logout),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            guard::require_token,
        ));
    let max_body = state.inner.max_body;
    Router::new()
        .route("/health", get(routes::health))
        .route("/", get(routes::index))
        .route("/login", get(session::login))
        .route("/assets/{name}", get(routes::asset))
        .merge(protected)
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::check_host_and_origin,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), guard::audit))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            guard::record_metrics,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests;
