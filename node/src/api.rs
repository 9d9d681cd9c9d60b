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
mod folders;
mod guard;
mod openapi;
mod routes;
mod session;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;

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
    /// Replaced whole when `config.toml` is reloaded (SIGHUP).
    analysis: std::sync::RwLock<Option<AnalysisSetup>>,
    /// Parses kept for incremental re-analysis of recently analysed files.
    parses: Arc<std::sync::Mutex<xencode_analysis::code::ParseCache>>,
    /// Dashboard login codes and sessions.
    sessions: session::Sessions,
    /// Refused unauthenticated requests, tallied per minute.
    refusals: crate::store::refusals::Refusals,
    /// The OpenAPI document, built with the router.
    openapi: OnceLock<Arc<serde_json::Value>>,
    /// Set when the node stops: long-lived streams (events) end, so that
    /// the server's graceful shutdown does not wait for their clients.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Linked folders.
    folders: OnceLock<crate::folder::Folders>,
    /// Set once the node is usable from the CLI (its `api-url` written):
    /// until then `/health` answers 503, so a script that waits for health
    /// can run the CLI next.
    ready: std::sync::atomic::AtomicBool,
}

/// How documents are processed.
#[derive(Debug, Clone)]
pub struct AnalysisSetup {
    pub worker: std::path::PathBuf,
    pub limits: xencode_analysis::worker::DocLimits,
    /// The local Ollama, and the models to prefer.
    pub ollama: xencode_analysis::ai::Client,
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
                analysis: std::sync::RwLock::new(None),
                parses: Arc::new(std::sync::Mutex::new(
                    xencode_analysis::code::ParseCache::new(PARSE_CACHE_FILES),
                )),
                sessions: session::Sessions::default(),
                refusals: crate::store::refusals::Refusals::default(),
                openapi: OnceLock::new(),
                folders: OnceLock::new(),
                stopping: tokio::sync::watch::Sender::new(false),
                ready: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Ends the long-lived streams (at shutdown).
    pub fn stop_streams(&self) {
        self.inner.stopping.send_replace(true);
    }

    /// Whether the node has finished starting (see [`ApiState::mark_ready`]).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(std::sync::atomic::Ordering::Acquire)
            && self.inner.store.get().is_some()
    }

    /// The node is usable: everything a client needs (the store, and the
    /// `api-url` file the CLI reads) is in place; `/health` turns 200.
    pub fn mark_ready(&self) {
        self.inner
            .ready
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Makes the loaded store available to the routes.
    pub fn attach_store(&self, store: Store) {
        if self.inner.store.set(store).is_err() {
            tracing::warn!("the store was attached twice; keeping the first");
        }
    }

    /// Sets the program run as the extraction worker (the `xencode` binary)
    /// and the analysis limits; without it, document routes answer 503.
    pub fn attach_analysis(&self, setup: AnalysisSetup) {
        if let Ok(mut slot) = self.inner.analysis.write() {
            *slot = Some(setup);
        }
    }

    /// The analysis setup now (a reload may replace it between requests;
    /// each request keeps the one it started with).
    pub fn analysis_setup(&self) -> Option<AnalysisSetup> {
        self.inner.analysis.read().ok()?.clone()
    }

    /// Makes linked folders available to `/api/v1/folders`.
    pub fn attach_folders(&self, folders: crate::folder::Folders) {
        let _ = self.inner.folders.set(folders);
    }

    fn folders(&self) -> Result<&crate::folder::Folders, ApiError> {
        self.inner.folders.get().ok_or_else(ApiError::starting)
    }

    /// Makes the network's facts (listen addresses) available.
    pub fn attach_net(&self, info: Arc<NetInfo>) {
        let _ = self.inner.net.set(info);
    }

    /// Addresses peers can reach this node at, each ending in `/p2p/<id>`.
    fn listen_addrs(&self) -> Vec<String> {
        self.inner
            .net
            .get()
            .map(|n| n.advertised(&self.inner.node.peer_id))
            .unwrap_or_default()
    }

    /// Whether peers can dial this node, as AutoNAT found.
    pub(crate) fn reachability(&self) -> xencode_protocol::api::Reachability {
        self.inner
            .net
            .get()
            .and_then(|n| n.reachability.read().ok().map(|r| *r))
            .unwrap_or_default()
    }

    /// How the network reaches each connected peer.
    pub(crate) fn links(
        &self,
    ) -> std::collections::HashMap<libp2p::PeerId, crate::net::reach::Link> {
        self.inner
            .net
            .get()
            .and_then(|n| n.links.read().ok().map(|l| l.clone()))
            .unwrap_or_default()
    }

    fn store(&self) -> Result<&Store, ApiError> {
        self.inner.store.get().ok_or_else(ApiError::starting)
    }
}

/// The documents route's body limit when no analysis setup is attached.
fn max_body_default() -> usize {
    50 * 1024 * 1024
}

/// The full router of the API and the dashboard, every route documented in
/// `/api/v1/openapi.json` as it is added (see `openapi.rs`).
pub fn router(state: ApiState) -> Router {
    use axum::http::Method;
    use openapi::{Auth, Doc, Documented};
    use xencode_protocol::analysis::{
        AnalysisList, AnalysisRecord, AnalyzeRequest, DocumentList, ModelList, ProcessedDocument,
    };
    use xencode_protocol::api::{
        AuditLog, CreateWorkspace, EditorLease, EditorSession, FileInfo, FileList, FolderInfo,
        FolderList, FolderOutcome, FolderRequest, Health, InviteRequest, InviteResponse,
        JoinRequest, LinkFolder, LoginLink, NodeEvent, NodeInfo, PeerList, Presence,
        RenameWorkspace, RevokeRequest, SessionInfo, SpliceRequest, SpliceResponse,
        WorkspaceDetail, WorkspaceList, WorkspaceRemoved, WorkspaceSummary,
    };
    const WS: &str = "workspaces";
    const FILES: &str = "files";
    const ANALYSIS: &str = "analysis";
    const NODE: &str = "node";
    const TEAM: &str = "team";
    const FOLDERS: &str = "folders";
    const DASHBOARD: &str = "dashboard";
    let doc_limit = state
        .analysis_setup()
        .map_or(max_body_default(), |a| {
            usize::try_from(a.limits.max_bytes).unwrap_or(usize::MAX)
        })
        .saturating_add(64 * 1024);
    let (protected, mut operations) = Documented::new()
        .route(
            Method::GET,
            "/metrics",
            Doc::new(NODE, "Prometheus metrics").raw(200, "text/plain"),
            routes::metrics,
        )
        .route(
            Method::GET,
            "/api/v1/node",
            Doc::new(NODE, "This node: peer id, addresses, store").json::<NodeInfo>(200),
            routes::node_info,
        )
        .route(
            Method::GET,
            "/api/v1/peers",
            Doc::new(TEAM, "Peers, their connection and per-workspace lag").json::<PeerList>(200),
            routes::peers,
        )
        .route(
            Method::GET,
            "/api/v1/workspaces",
            Doc::new(WS, "List workspaces").json::<WorkspaceList>(200),
            routes::list_workspaces,
        )
        .route(
            Method::POST,
            "/api/v1/workspaces",
            Doc::new(WS, "Create a workspace")
                .json_body::<CreateWorkspace>()
                .json::<WorkspaceSummary>(201),
            routes::create_workspace,
        )
        .route(
            Method::GET,
            "/api/v1/workspaces/{id}",
            Doc::new(WS, "A workspace: members, heads").json::<WorkspaceDetail>(200),
            routes::show_workspace,
        )
        .route(
            Method::PATCH,
            "/api/v1/workspaces/{id}",
            Doc::new(WS, "Rename a workspace (admins; for every member)")
                .json_body::<RenameWorkspace>()
                .json::<WorkspaceSummary>(200),
            routes::rename_workspace,
        )
        .route(
            Method::DELETE,
            "/api/v1/workspaces/{id}",
            Doc::new(
                WS,
                "Forget a workspace on this node: unlink its folders, delete its history from the store",
            )
            .json::<WorkspaceRemoved>(200),
            routes::remove_workspace,
        )
        .route(
            Method::GET,
            "/api/v1/workspaces/{id}/files",
            Doc::new(FILES, "List files, sorted by path").json::<FileList>(200),
            routes::list_files,
        )
        .route(
            Method::GET,
            "/api/v1/workspaces/{id}/files/{*path}",
            Doc::new(FILES, "A file's exact bytes").raw(200, "application/octet-stream"),
            routes::get_file,
        )
        .route(
            Method::PUT,
            "/api/v1/workspaces/{id}/files/{*path}",
            Doc::new(FILES, "Write a file (the body is its raw bytes)")
                .raw_body("application/octet-stream")
                .json::<FileInfo>(200),
            routes::put_file,
        )
        .route(
            Method::DELETE,
            "/api/v1/workspaces/{id}/files/{*path}",
            Doc::new(FILES, "Remove a file").empty(204),
            routes::remove_file,
        )
        .route(
            Method::GET,
            "/api/v1/workspaces/{id}/automerge/{*path}",
            Doc::new(
                FILES,
                "A file's Automerge document, saved, for other Automerge applications",
            )
            .raw(200, "application/octet-stream"),
            routes::export_automerge,
        )
        .route(
            Method::PUT,
            "/api/v1/workspaces/{id}/automerge/{*path}",
            Doc::new(
                FILES,
                "Import a document made by another Automerge application as a new file, with its history (the body is the saved document)",
            )
            .query(&[("field", "the root key holding the text, default `text`")])
            .raw_body("application/octet-stream")
            .json::<xencode_protocol::api::FileImported>(201),
            routes::import_automerge,
        )
        .route(
            Method::POST,
            "/api/v1/workspaces/{id}/splice",
            Doc::new(FILES, "Character edits to a text file (one, or a batch)")
                .json_body::<SpliceRequest>()
                .json::<SpliceResponse>(200),
            routes::splice,
        )
        .route(
            Method::POST,
            "/api/v1/workspaces/{id}/invites",
            Doc::new(TEAM, "Invite a peer with a role; returns the token")
                .json_body::<InviteRequest>()
                .json::<InviteResponse>(201),
            routes::invite,
        )
        .route(
            Method::POST,
            "/api/v1/workspaces/{id}/revoke",
            Doc::new(TEAM, "Revoke a member (peer id) or a token (token id)")
                .json_body::<RevokeRequest>()
                .json::<serde_json::Value>(200),
            routes::revoke,
        )
        .route(
            Method::GET,
            "/api/v1/folders",
            Doc::new(
                FOLDERS,
                "Linked folders: state, files, local changes, errors",
            )
            .json::<FolderList>(200),
            folders::list,
        )
        .route(
            Method::POST,
            "/api/v1/folders",
            Doc::new(
                FOLDERS,
                "Link a directory to a workspace (or, without `workspace`, create one from it)",
            )
            .json_body::<LinkFolder>()
            .json::<FolderInfo>(201),
            folders::link,
        )
        .route(
            Method::POST,
            "/api/v1/folders/unlink",
            Doc::new(FOLDERS, "Stop syncing a folder; its files stay")
                .json_body::<FolderRequest>()
                .json::<FolderOutcome>(200),
            folders::unlink,
        )
        .route(
            Method::POST,
            "/api/v1/folders/revert",
            Doc::new(
                FOLDERS,
                "Receive-only folder: restore the workspace's version of local edits",
            )
            .json_body::<FolderRequest>()
            .json::<FolderOutcome>(200),
            folders::revert,
        )
        .route(
            Method::POST,
            "/api/v1/workspaces/{id}/editors",
            Doc::new(
                FOLDERS,
                "An editor session (`xencode lsp`) holds these files open: the folder leaves them to it",
            )
            .json_body::<EditorSession>()
            .json::<EditorLease>(200),
            folders::editors,
        )
        .route(
            Method::GET,
            "/api/v1/workspaces/{id}/presence",
            Doc::new(
                FOLDERS,
                "Teammates with files of the workspace open in an editor, and their cursors",
            )
            .json::<Presence>(200),
            folders::presence,
        )
        .route(
            Method::POST,
            "/api/v1/join",
            Doc::new(TEAM, "Accept an invitation token; syncing starts")
                .json_body::<JoinRequest>()
                .json::<WorkspaceSummary>(201),
            routes::join,
        )
        .route(
            Method::POST,
            "/api/v1/workspaces/{id}/analyze",
            Doc::new(
                ANALYSIS,
                "Analyze a file (with `Accept: text/event-stream`, the AI review streams)",
            )
            .json_body::<AnalyzeRequest>()
            .json::<AnalysisRecord>(200),
            analysis::analyze,
        )
        .route(
            Method::GET,
            "/api/v1/workspaces/{id}/analyses",
            Doc::new(ANALYSIS, "Stored analyses").json::<AnalysisList>(200),
            analysis::analyses,
        )
        .route(
            Method::GET,
            "/api/v1/workspaces/{id}/documents",
            Doc::new(ANALYSIS, "Processed documents").json::<DocumentList>(200),
            analysis::documents,
        )
        .route_with(
            Method::POST,
            "/api/v1/workspaces/{id}/documents",
            Doc::new(
                ANALYSIS,
                "Extract a PDF, DOCX, HTML or Markdown file into the workspace",
            )
            .multipart()
            .json::<ProcessedDocument>(201),
            analysis::add_document,
            |m| m.layer(DefaultBodyLimit::max(doc_limit)),
        )
        .route(
            Method::GET,
            "/api/v1/models",
            Doc::new(ANALYSIS, "The local Ollama's models").json::<ModelList>(200),
            analysis::models,
        )
        .route(
            Method::GET,
            "/api/v1/events",
            Doc::new(
                NODE,
                "Live events (SSE), filtered to this node's workspaces",
            )
            .query(&[("workspace", "only this workspace's events")])
            .sse::<NodeEvent>(),
            events::events,
        )
        .route(
            Method::GET,
            "/api/v1/audit",
            Doc::new(
                NODE,
                "The audit log (admins see their workspaces' entries) and its chain check",
            )
            .query(&[
                ("workspace", "only this workspace (admins)"),
                ("limit", "newest entries to return, default 200"),
            ])
            .json::<AuditLog>(200),
            routes::audit,
        )
        .route(
            Method::GET,
            "/api/v1/backup",
            Doc::new(NODE, "A consistent snapshot of the store (a redb file)")
                .auth(Auth::TokenOnly)
                .raw(200, "application/octet-stream"),
            routes::backup,
        )
        .route(
            Method::POST,
            "/api/v1/dashboard/login",
            Doc::new(DASHBOARD, "Mint a one-time dashboard login URL")
                .auth(Auth::TokenOnly)
                .json::<LoginLink>(201),
            session::login_link,
        )
        .route(
            Method::GET,
            "/api/v1/session",
            Doc::new(
                DASHBOARD,
                "How the caller is authenticated, and its CSRF token",
            )
            .json::<SessionInfo>(200),
            session::session_info,
        )
        .route(
            Method::DELETE,
            "/api/v1/session",
            Doc::new(DASHBOARD, "Log a dashboard session out").empty(204),
            session::logout,
        )
        .route(
            Method::GET,
            "/api/v1/openapi.json",
            Doc::new(NODE, "This document").json::<serde_json::Value>(200),
            routes::openapi,
        )
        .finish();
    let (public, public_ops) = Documented::new()
        .route(
            Method::GET,
            "/health",
            Doc::new(NODE, "200 once the store is loaded")
                .auth(Auth::Public)
                .json::<Health>(200),
            routes::health,
        )
        .route(
            Method::GET,
            "/",
            Doc::new(DASHBOARD, "The dashboard page")
                .auth(Auth::Public)
                .raw(200, "text/html"),
            routes::index,
        )
        .route(
            Method::GET,
            "/assets/{name}",
            Doc::new(DASHBOARD, "The dashboard's script and style sheet")
                .auth(Auth::Public)
                .raw(200, "text/javascript"),
            routes::asset,
        )
        .route(
            Method::GET,
            "/login",
            Doc::new(DASHBOARD, "Redeem a one-time login URL")
                .auth(Auth::Public)
                .query(&[("code", "the one-time code from `xencode dashboard`")])
                .redirect(),
            session::login,
        )
        .finish();
    operations.extend(public_ops);
    let document = openapi::document(
        &operations,
        &state.inner.node.api_url,
        state.inner.node.port,
    );
    let _ = state.inner.openapi.set(Arc::new(document));
    let protected = protected.route_layer(middleware::from_fn_with_state(
        state.clone(),
        guard::require_token,
    ));
    let max_body = state.inner.max_body;
    public
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
