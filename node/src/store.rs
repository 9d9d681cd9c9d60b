//! The store: every workspace's Automerge documents, persisted in one redb
//! file and owned by one actor thread fed through two bounded queues (local commands
//! first, then network input).
//!
//! Architecture invariants:
//! - Only the actor thread touches the redb database and the loaded
//!   documents; everything else sends it a [`Command`] and awaits the reply.
//! - A write is acknowledged only after the redb transaction holding its
//!   changes committed with `Durability::Immediate` (fsync'd). Writes that
//!   arrive together share one commit (group commit).
//! - Every local change is persisted as its own change record; documents are
//!   compacted into snapshots in the background, never on the reply path.
//! - Reads never observe a change that is not yet committed.
//! - A file that is not a xencode store is refused and left untouched.

mod actor;
pub mod audit;
pub mod backup;
mod cards;
pub mod folders;
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzz;
mod host;
mod memberships;
mod persist;
mod presence;
pub mod refusals;

pub use presence::OpenHere;
mod sync_driver;
pub mod tables;
pub mod tokens;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use automerge::ChangeHash;
use tokio::sync::{broadcast, mpsc, oneshot};
use xencode_protocol::analysis::{AnalysisRecord, ProcessedDocument};
use xencode_protocol::api::{
    AuditLog, FileInfo, InviteRequest, InviteResponse, NodeEvent, PeerInfo, Role, SpliceEdit,
    SpliceResponse, WorkspaceDetail, WorkspaceSummary,
};
use xencode_protocol::sync::Input;
use xencode_protocol::wire::Frame;
use xencode_protocol::{PeerId, WorkspaceId, WorkspacePath};

use crate::metrics::Metrics;
use crate::workspace::{FileContent, WorkspaceError};

/// Commands waiting for the actor; senders wait when it is full.
const CHANNEL_CAPACITY: usize = 1024;

/// Why the store could not be opened. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error(
        "{path} is not a xencode store (it is not a redb database); it was left untouched. Move it away or use another --data-dir"
    )]
    NotAStore { path: PathBuf },
    #[error(
        "{path} is a redb database of another program; it was left untouched. Use another --data-dir"
    )]
    Foreign { path: PathBuf },
    #[error(
        "{path} was written by a newer xencode (schema {found}, this build reads up to {supported}); upgrade xencode"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{path} is in use by another xencode node; stop it first or use another --data-dir")]
    InUse { path: PathBuf },
    #[error(
        "{path} is damaged ({detail}); it was left as it is. Restore it from a backup or move it away"
    )]
    Corrupt { path: PathBuf, detail: String },
    // The I/O error is in the message and not a `source`: the CLI prints
    // the chain of sources, which would say it twice.
    #[error("cannot open {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("no workspace {0} on this node")]
    WorkspaceNotFound(WorkspaceId),
    #[error("invalid workspace name: {0}")]
    InvalidName(#[from] xencode_protocol::api::NameError),
    #[error(
        "this node already has a workspace named {name:?} ({id}); use it by name or id, or choose another name"
    )]
    NameTaken { name: String, id: WorkspaceId },
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("the disk is full; nothing was written. Free some space and retry")]
    DiskFull,
    #[error("the store could not commit: {0}")]
    Storage(#[source] Arc<redb::Error>),
    #[error("the database is closed after an I/O error; restart the node")]
    DatabaseClosed,
    #[error("a record could not be encoded: {0}")]
    Encoding(#[from] postcard::Error),
    #[error(transparent)]
    Audit(Arc<audit::AuditError>),
    #[error("the OS random source failed: {0}")]
    Random(#[from] getrandom::Error),
    #[error("a token this node minted does not verify: {0}")]
    Minted(xencode_protocol::capability::CapabilityError),
    #[error("the backup failed: {0}")]
    Backup(Arc<backup::BackupError>),
    #[error("the store has shut down")]
    Closed,
    #[error(transparent)]
    Forbidden(#[from] Forbidden),
    #[error("invalid invitation: {0}")]
    InvalidInvitation(#[from] BadInvitation),
    #[error(transparent)]
    InvalidRequest(#[from] BadRequest),
    #[error(transparent)]
    Import(#[from] crate::workspace::interop::ImportError),
}

// Answers go to every reply of a commit group: the errors that are not
// `Clone` are shared.
impl From<audit::AuditError> for StoreError {
    fn from(e: audit::AuditError) -> Self {
        StoreError::Audit(Arc::new(e))
    }
}

impl From<backup::BackupError> for StoreError {
    fn from(e: backup::BackupError) -> Self {
        StoreError::Backup(Arc::new(e))
    }
}

/// Why this node may not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Forbidden {
    #[error("only admins can {0}")]
    NotAdmin(&'static str),
    #[error("the workspace has not synced yet")]
    NotSynced,
    #[error("your role in this workspace is {0}; writing needs developer or admin")]
    CannotWrite(&'static str),
    #[error("the workspace's creator cannot be revoked, by peer id or by token id")]
    RevokingTheCreator,
    #[error("the audit log of workspace {0} is for its admins; this node is not one")]
    AuditOfOthers(WorkspaceId),
    #[error(transparent)]
    Token(xencode_protocol::capability::CapabilityError),
}

/// Why an invitation cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadInvitation {
    #[error(transparent)]
    Unreadable(#[from] xencode_protocol::invite::InviteError),
    #[error("the invitation was not verified; try again")]
    NotVerified,
    #[error(transparent)]
    Token(#[from] xencode_protocol::capability::CapabilityError),
    #[error("the inviter is not a peer id")]
    InviterNotAPeer,
}

/// A request the store cannot carry out as given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BadRequest {
    #[error("{0:?} is not a peer id (ask the invitee for `xencode id`)")]
    NotAPeerId(String),
    #[error("give a member's peer id or a token id")]
    NoRevocationTarget,
    #[error("{0:?} is neither a member of this workspace nor a token id")]
    UnknownRevocationTarget(String),
    #[error(
        "{dir} overlaps the linked folder {linked}: a folder belongs to one workspace (unlink it first, or choose another directory)"
    )]
    FolderTaken { dir: String, linked: String },
}

/// What the store asks of the network task.
#[derive(Debug, Clone)]
pub enum NetCommand {
    /// Send a frame to a connected peer.
    Send { peer: PeerId, frame: Frame },
    /// Close every connection to a peer.
    Disconnect { peer: PeerId, reason: String },
    /// Dial a peer at these addresses (and keep redialing it).
    Dial { peer: PeerId, addrs: Vec<String> },
    /// A member's newest signed addresses: tried first from now on, and
    /// dialled now if the member is not connected.
    Moved { peer: PeerId, addrs: Vec<String> },
    /// Follow a workspace's gossip topic.
    Subscribe { workspace: WorkspaceId },
    /// Publish a heads digest on a workspace's gossip topic.
    Announce {
        workspace: WorkspaceId,
        digest: [u8; 16],
    },
    /// The configured peers to dial until they answer (`network.peers`,
    /// after a reload): new ones are dialed now, removed ones no longer.
    SetBootstrap { addrs: Vec<String> },
}

/// Tunables of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Compact a document once it has this many change records, and every
    /// document with records once the store holds this many in all.
    pub compact_after_changes: u64,
    /// Largest number of commands folded into one commit.
    pub max_group: usize,
    /// UTF-8 files up to this size are Automerge Text; larger ones are
    /// stored whole.
    pub max_text_bytes: usize,
    /// The display name this node gives itself in the workspaces it is a
    /// member of (`[node] name`).
    pub display_name: Option<String>,
    /// File documents kept loaded per workspace; idle ones beyond it are
    /// parked as their snapshots (`workspace/parking.rs`).
    pub loaded_file_docs: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            compact_after_changes: 1000,
            max_group: 256,
            max_text_bytes: 1 << 20,
            display_name: None,
            loaded_file_docs: crate::workspace::parking::LOADED_FILE_DOCS,
        }
    }
}

/// Figures the store shares without a round trip to the actor.
#[derive(Debug)]
pub struct StoreStats {
    pub workspaces: AtomicUsize,
    pub file_size: AtomicU64,
    pub epoch: AtomicU64,
    /// This node's role in each workspace it is a member of (revoked or
    /// never-admitted workspaces are absent): what its event stream may show.
    pub roles: std::sync::RwLock<BTreeMap<WorkspaceId, Role>>,
    /// The other members (listed, not revoked, not expired when last
    /// published) of the workspaces this node holds: the only peers its
    /// relay serves (`net::relay`).
    pub members: std::sync::RwLock<std::collections::HashSet<xencode_protocol::PeerId>>,
    /// Committed happenings, for `GET /api/v1/events`. Bounded: a slow
    /// subscriber misses events and is told so, the store never waits.
    pub events: broadcast::Sender<NodeEvent>,
}

/// Events kept for slow subscribers before they miss some.
const EVENT_CAPACITY: usize = 1024;

impl StoreStats {
    fn new() -> Self {
        Self {
            workspaces: AtomicUsize::new(0),
            file_size: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            roles: std::sync::RwLock::new(BTreeMap::new()),
            members: std::sync::RwLock::default(),
            events: broadcast::channel(EVENT_CAPACITY).0,
        }
    }

    /// Publishes an event to whoever follows the stream; nobody listening
    /// is fine.
    pub(crate) fn publish(&self, event: NodeEvent) {
        let _ = self.events.send(event);
    }

    /// This node's role in a workspace, if it is a member.
    pub fn role(&self, ws: &WorkspaceId) -> Option<Role> {
        self.roles.read().ok()?.get(ws).copied()
    }
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A request to the store actor.
#[derive(Debug)]
pub(crate) enum Command {
    CreateWorkspace {
        name: String,
        now_ms: u64,
        reply: Reply<WorkspaceSummary>,
    },
    RemoveWorkspace {
        ws: WorkspaceId,
        reply: Reply<xencode_protocol::api::WorkspaceRemoved>,
    },
    /// A new display name (a config reload).
    SetDisplayName {
        name: Option<String>,
        reply: Reply<()>,
    },
    RenameWorkspace {
        ws: WorkspaceId,
        name: String,
        now_ms: u64,
        reply: Reply<WorkspaceSummary>,
    },
    ListWorkspaces {
        reply: Reply<Vec<WorkspaceSummary>>,
    },
    Workspace {
        id: WorkspaceId,
        reply: Reply<WorkspaceDetail>,
    },
    PutFile {
        ws: WorkspaceId,
        path: WorkspacePath,
        bytes: Vec<u8>,
        now_ms: u64,
        reply: Reply<FileInfo>,
    },
    ImportFile {
        ws: WorkspaceId,
        path: WorkspacePath,
        foreign: Box<crate::workspace::interop::Foreign>,
        now_ms: u64,
        reply: Reply<xencode_protocol::api::FileImported>,
    },
    ExportFile {
        ws: WorkspaceId,
        path: WorkspacePath,
        reply: Reply<Vec<u8>>,
    },
    GetFile {
        ws: WorkspaceId,
        path: WorkspacePath,
        reply: Reply<FileContent>,
    },
    ListFiles {
        ws: WorkspaceId,
        reply: Reply<Vec<FileInfo>>,
    },
    PutAnalysis {
        ws: WorkspaceId,
        path: WorkspacePath,
        record: Box<AnalysisRecord>,
        now_ms: u64,
        reply: Reply<()>,
    },
    Analyses {
        ws: WorkspaceId,
        reply: Reply<Vec<AnalysisRecord>>,
    },
    AiCacheGet {
        key: [u8; 32],
        reply: Reply<Option<String>>,
    },
    AiCachePut {
        key: [u8; 32],
        text: String,
        reply: Reply<()>,
    },
    PutDocument {
        ws: WorkspaceId,
        doc: Box<ProcessedDocument>,
        path: Option<String>,
        now_ms: u64,
        reply: Reply<()>,
    },
    Documents {
        ws: WorkspaceId,
        reply: Reply<Vec<ProcessedDocument>>,
    },
    RemoveFile {
        ws: WorkspaceId,
        path: WorkspacePath,
        now_ms: u64,
        reply: Reply<()>,
    },
    /// This node's editors have these files open, with cursors (offset,
    /// heads): its presence.
    SetPresence {
        ws: WorkspaceId,
        files: Vec<OpenHere>,
    },
    /// Teammates with files of `ws` open.
    Presence {
        ws: WorkspaceId,
        reply: Reply<Vec<xencode_protocol::api::Teammate>>,
    },
    Splice {
        ws: WorkspaceId,
        path: WorkspacePath,
        base: Option<Vec<ChangeHash>>,
        edits: Vec<SpliceEdit>,
        now_ms: u64,
        reply: Reply<SpliceResponse>,
    },
    /// Compact every document with change records.
    Compact {
        reply: Reply<usize>,
    },
    /// Something happened on the network.
    Net {
        input: Input,
    },
    /// Where to send frames.
    AttachNet {
        tx: mpsc::Sender<NetCommand>,
    },
    /// An address a peer was reached at.
    PeerAddress {
        peer: PeerId,
        addr: String,
    },
    /// The addresses this node can be reached at changed: members hear a
    /// new signed card.
    OwnAddresses {
        addrs: Vec<String>,
    },
    Invite {
        ws: WorkspaceId,
        request: InviteRequest,
        addrs: Vec<String>,
        now_ms: u64,
        reply: Reply<InviteResponse>,
    },
    Join {
        token: String,
        now_ms: u64,
        reply: Reply<WorkspaceSummary>,
    },
    Revoke {
        ws: WorkspaceId,
        target: String,
        now_ms: u64,
        reply: Reply<()>,
    },
    Peers {
        reply: Reply<Vec<PeerInfo>>,
    },
    /// Write a consistent snapshot of the store to a new file.
    Backup {
        dest: PathBuf,
        now_ms: u64,
        reply: Reply<backup::BackupInfo>,
    },
    /// Record an authorization decision in the audit log.
    Audit {
        decision: audit::Decision,
    },
    /// Record tallies of refused unauthenticated requests.
    AuditRefusals {
        tallies: Vec<xencode_protocol::api::RefusalCount>,
    },
    /// Read the audit log as this node's admin may see it.
    ReadAudit {
        workspace: Option<WorkspaceId>,
        limit: usize,
        denied_only: bool,
        reply: Reply<AuditLog>,
    },
    /// Linked folders (`folders.rs`).
    Folder(folders::FolderCommand),
    /// Peers to dial at start: inviters of joined workspaces.
    Contacts {
        reply: Reply<Vec<(String, Vec<String>)>>,
    },
}

/// A cloneable handle to the store actor.
#[derive(Clone, Debug)]
pub struct Store {
    /// Local commands: served before network input (see `actor::Inbox`).
    tx: mpsc::Sender<Command>,
    /// Network input.
    net_tx: mpsc::Sender<Command>,
    stats: Arc<StoreStats>,
    tokens: Arc<tokens::TokenVerifier>,
    path: PathBuf,
}

/// The running actor thread; join it after dropping every [`Store`] handle to
/// be sure the database is closed.
#[derive(Debug)]
pub struct StoreThread(std::thread::JoinHandle<()>);

impl StoreThread {
    /// Waits for the actor to finish its last commit and close the file.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("the store thread panicked while shutting down");
        }
    }
}

impl Store {
    /// Opens (or creates) the store at `path`, loads every workspace, and
    /// starts the actor. Blocking: call it from a blocking context.
    pub fn open(
        path: &Path,
        author: AuthorKey,
        options: StoreOptions,
        metrics: Arc<Metrics>,
    ) -> Result<(Store, StoreThread), OpenError> {
        let stats = Arc::new(StoreStats::new());
        let tokens = Arc::new(tokens::TokenVerifier::default());
        let actor = actor::Actor::open(
            path,
            author,
            options,
            metrics,
            stats.clone(),
            tokens.clone(),
        )?;
        let (tx, local) = mpsc::channel(CHANNEL_CAPACITY);
        let (net_tx, network) = mpsc::channel(CHANNEL_CAPACITY);
        let inbox = actor::Inbox { local, network };
        let thread = std::thread::Builder::new()
            .name("xencode-store".into())
            .spawn(move || actor.run(inbox))
            .map_err(|source| OpenError::Io {
                path: path.to_owned(),
                error: source,
            })?;
        Ok((
            Store {
                tx,
                net_tx,
                stats,
                tokens,
                path: path.to_owned(),
            },
            StoreThread(thread),
        ))
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Figures shared by the actor.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// The same figures, to keep beyond this handle (the network's relay
    /// reads who is a member from them).
    pub fn shared_stats(&self) -> Arc<StoreStats> {
        self.stats.clone()
    }

    /// Follows the committed events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.stats.events.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send_command(make(reply)).await?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    async fn send_command(&self, command: Command) -> Result<(), StoreError> {
        self.tx.send(command).await.map_err(|_| StoreError::Closed)
    }

    pub async fn create_workspace(
        &self,
        name: String,
        now_ms: u64,
    ) -> Result<WorkspaceSummary, StoreError> {
        self.ask(|reply| Command::CreateWorkspace {
            name,
            now_ms,
            reply,
        })
        .await
    }

    /// Sets the display name this node gives itself in its workspaces.
    pub async fn set_display_name(&self, name: Option<String>) -> Result<(), StoreError> {
        self.ask(|reply| Command::SetDisplayName { name, reply })
            .await
    }

    /// Forgets a workspace on this node, deleting its history from the
    /// store (unlink its folders first: `Folders::unlink_workspace`).
    pub async fn remove_workspace(
        &self,
        ws: WorkspaceId,
    ) -> Result<xencode_protocol::api::WorkspaceRemoved, StoreError> {
        self.ask(|reply| Command::RemoveWorkspace { ws, reply })
            .await
    }

    /// Renames a workspace (admins; the new name must be free on this node).
    pub async fn rename_workspace(
        &self,
        ws: WorkspaceId,
        name: String,
        now_ms: u64,
    ) -> Result<WorkspaceSummary, StoreError> {
        self.ask(|reply| Command::RenameWorkspace {
            ws,
            name,
            now_ms,
            reply,
        })
        .await
    }

    pub async fn list_workspaces(&self) -> Result<Vec<WorkspaceSummary>, StoreError> {
        self.ask(|reply| Command::ListWorkspaces { reply }).await
    }

    pub async fn workspace(&self, id: WorkspaceId) -> Result<WorkspaceDetail, StoreError> {
        self.ask(|reply| Command::Workspace { id, reply }).await
    }

    pub async fn put_file(
        &self,
        ws: WorkspaceId,
        path: WorkspacePath,
        bytes: Vec<u8>,
        now_ms: u64,
    ) -> Result<FileInfo, StoreError> {
        self.ask(|reply| Command::PutFile {
            ws,
            path,
            bytes,
            now_ms,
            reply,
        })
        .await
    }

    /// Imports a document made by another Automerge application as the new
    /// file `path`, with its history (`interop`): read off the store thread,
    /// then replayed as this node's changes.
    pub async fn import_file(
        &self,
        ws: WorkspaceId,
        path: WorkspacePath,
        bytes: Vec<u8>,
        field: String,
        now_ms: u64,
    ) -> Result<xencode_protocol::api::FileImported, StoreError> {
        use crate::workspace::interop;
        // The common mistake (importing again) is refused before the read,
        // which may take seconds; the store thread checks again.
        if self.get_file(ws, path.clone()).await.is_ok() {
            return Err(WorkspaceError::FileExists(path).into());
        }
        // The node's own limit is checked on the store thread (it may be
        // reloaded); here, the most any configuration allows.
        let cap = usize::try_from(crate::config::MAX_TEXT_BYTES_CAP).unwrap_or(usize::MAX);
        let foreign = tokio::task::spawn_blocking(move || {
            interop::read(&bytes, &field, interop::ImportLimits::for_text(cap))
        })
        .await
        .map_err(|_| {
            interop::ImportError::Load("reading the document stopped unexpectedly".into())
        })??;
        self.ask(|reply| Command::ImportFile {
            ws,
            path,
            foreign: Box::new(foreign),
            now_ms,
            reply,
        })
        .await
    }

    /// A file's document as Automerge saves it.
    pub async fn export_file(
        &self,
        ws: WorkspaceId,
        path: WorkspacePath,
    ) -> Result<Vec<u8>, StoreError> {
        self.ask(|reply| Command::ExportFile { ws, path, reply })
            .await
    }

    pub async fn get_file(
        &self,
        ws: WorkspaceId,
        path: WorkspacePath,
    ) -> Result<FileContent, StoreError> {
        self.ask(|reply| Command::GetFile { ws, path, reply }).await
    }

    pub async fn list_files(&self, ws: WorkspaceId) -> Result<Vec<FileInfo>, StoreError> {
        self.ask(|reply| Command::ListFiles { ws, reply }).await
    }

    /// Stores an analysis in the workspace (needs write rights), durably.
    pub async fn put_analysis(
        &self,
        ws: WorkspaceId,
        path: WorkspacePath,
        record: AnalysisRecord,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let target = path.as_str().to_owned();
        self.ask(|reply| Command::PutAnalysis {
            ws,
            path,
            record: Box::new(record),
            now_ms,
            reply,
        })
        .await?;
        self.stats.publish(NodeEvent::Analysis {
            workspace: ws,
            target,
            kind: "code".into(),
        });
        Ok(())
    }

    /// Writes a consistent snapshot of the store to `dest` (a new file),
    /// while the node keeps serving: the copy runs on its own thread from one
    /// read transaction.
    pub async fn backup(
        &self,
        dest: PathBuf,
        now_ms: u64,
    ) -> Result<backup::BackupInfo, StoreError> {
        self.ask(|reply| Command::Backup {
            dest,
            now_ms,
            reply,
        })
        .await
    }

    /// Appends an authorization decision to the audit log (with the next
    /// commit). Waits only while the actor's queue is full.
    pub async fn audit(&self, decision: audit::Decision) {
        if self.tx.send(Command::Audit { decision }).await.is_err() {
            tracing::error!("the store is closed; an audit entry was not written");
        }
    }

    /// Records tallies of refused unauthenticated requests (their own
    /// table, their own cap; see `audit.rs`).
    pub async fn audit_refusals(&self, tallies: Vec<xencode_protocol::api::RefusalCount>) {
        if self
            .tx
            .send(Command::AuditRefusals { tallies })
            .await
            .is_err()
        {
            tracing::error!("the store is closed; refusal tallies were not written");
        }
    }

    /// The newest `limit` audit entries this node's user may see: node-wide
    /// ones, and those of workspaces where this node is an admin (only
    /// `workspace`'s if given), with the whole chain verified.
    /// The newest `limit` audit entries this node's user may see (of
    /// `workspace` only, if given; refusals only, if `denied_only`).
    pub async fn read_audit(
        &self,
        workspace: Option<WorkspaceId>,
        limit: usize,
        denied_only: bool,
    ) -> Result<AuditLog, StoreError> {
        self.ask(|reply| Command::ReadAudit {
            workspace,
            limit,
            denied_only,
            reply,
        })
        .await
    }

    /// A cached AI answer.
    pub async fn ai_cache_get(&self, key: [u8; 32]) -> Result<Option<String>, StoreError> {
        self.ask(|reply| Command::AiCacheGet { key, reply }).await
    }

    /// Caches an AI answer.
    pub async fn ai_cache_put(&self, key: [u8; 32], text: String) -> Result<(), StoreError> {
        self.ask(|reply| Command::AiCachePut { key, text, reply })
            .await
    }

    /// Stores a processed document in the workspace (needs write rights).
    pub async fn put_document(
        &self,
        ws: WorkspaceId,
        doc: ProcessedDocument,
        path: Option<String>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let target = doc.id.clone();
        self.ask(|reply| Command::PutDocument {
            ws,
            doc: Box::new(doc),
            path,
            now_ms,
            reply,
        })
        .await?;
        self.stats.publish(NodeEvent::Analysis {
            workspace: ws,
            target,
            kind: "document".into(),
        });
        Ok(())
    }

    /// The processed documents of a workspace.
    pub async fn documents(&self, ws: WorkspaceId) -> Result<Vec<ProcessedDocument>, StoreError> {
        self.ask(|reply| Command::Documents { ws, reply }).await
    }

    /// The analyses stored in a workspace.
    pub async fn analyses(&self, ws: WorkspaceId) -> Result<Vec<AnalysisRecord>, StoreError> {
        self.ask(|reply| Command::Analyses { ws, reply }).await
    }

    pub async fn remove_file(
        &self,
        ws: WorkspaceId,
        path: WorkspacePath,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.ask(|reply| Command::RemoveFile {
            ws,
            path,
            now_ms,
            reply,
        })
        .await
    }

    /// Character edits to a text file, at the current version or at `base`
    /// (see [`Workspace::edit`](crate::workspace::Workspace::edit)).
    pub async fn splice(
        &self,
        ws: WorkspaceId,
        path: WorkspacePath,
        base: Option<Vec<ChangeHash>>,
        edits: Vec<SpliceEdit>,
        now_ms: u64,
    ) -> Result<SpliceResponse, StoreError> {
        self.ask(|reply| Command::Splice {
            ws,
            path,
            base,
            edits,
            now_ms,
            reply,
        })
        .await
    }

    /// What this node's editors have open in `ws` (path, cursor offset and
    /// the heads it is at): its teammates hear it.
    pub async fn set_presence(
        &self,
        ws: WorkspaceId,
        files: Vec<OpenHere>,
    ) -> Result<(), StoreError> {
        self.tx
            .send(Command::SetPresence { ws, files })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Teammates with files of `ws` open in an editor, with their cursors.
    pub async fn presence(
        &self,
        ws: WorkspaceId,
    ) -> Result<Vec<xencode_protocol::api::Teammate>, StoreError> {
        self.ask(|reply| Command::Presence { ws, reply }).await
    }

    /// Compacts every document that has change records; returns how many.
    pub async fn compact(&self) -> Result<usize, StoreError> {
        self.ask(|reply| Command::Compact { reply }).await
    }

    /// Verifies the token an `Open` or `Accept` frame carries, on the
    /// blocking pool, so that the store's admission finds it verified (see
    /// [`tokens`]). Whether it verified; `None` if this node does not hold
    /// the workspace (the store refuses such a frame without looking).
    pub async fn verify_token(&self, frame: &Frame, now_ms: u64) -> Option<bool> {
        let (Frame::Open { workspace, token } | Frame::Accept { workspace, token }) = frame else {
            return None;
        };
        let root = self.tokens.root(workspace)?;
        if let Some(done) = self.tokens.cached(&root, token) {
            return Some(done.is_ok());
        }
        let tokens = self.tokens.clone();
        let token = token.clone();
        tokio::task::spawn_blocking(move || tokens.verify(&root, &token, now_ms).is_ok())
            .await
            .ok()
    }

    /// Feeds a network happening to the sync engine.
    pub async fn net_input(&self, input: Input) -> Result<(), StoreError> {
        self.net_tx
            .send(Command::Net { input })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Connects the store to the network task.
    pub async fn attach_net(&self, tx: mpsc::Sender<NetCommand>) -> Result<(), StoreError> {
        self.tx
            .send(Command::AttachNet { tx })
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Tells the store where this node can be reached now (each address
    /// ending in `/p2p/<this node>`): it signs a new address card.
    pub async fn own_addresses(&self, addrs: Vec<String>) -> Result<(), StoreError> {
        self.net_tx
            .send(Command::OwnAddresses { addrs })
            .await
            .map_err(|_| StoreError::Closed)
    }

    pub async fn peer_address(&self, peer: PeerId, addr: String) -> Result<(), StoreError> {
        self.net_tx
            .send(Command::PeerAddress { peer, addr })
            .await
            .map_err(|_| StoreError::Closed)
    }

    pub async fn invite(
        &self,
        ws: WorkspaceId,
        request: InviteRequest,
        addrs: Vec<String>,
        now_ms: u64,
    ) -> Result<InviteResponse, StoreError> {
        self.ask(|reply| Command::Invite {
            ws,
            request,
            addrs,
            now_ms,
            reply,
        })
        .await
    }

    pub async fn join(&self, token: String, now_ms: u64) -> Result<WorkspaceSummary, StoreError> {
        // Verified here, on the blocking pool: a crafted invitation must not
        // hold up the store (see [`tokens`]).
        let inv =
            xencode_protocol::invite::Invitation::decode(&token).map_err(BadInvitation::from)?;
        let tokens = self.tokens.clone();
        tokio::task::spawn_blocking(move || tokens.verify(&inv.root_key, &inv.token, now_ms))
            .await
            .map_err(|_| StoreError::Closed)?
            .map_err(BadInvitation::from)?;
        self.ask(|reply| Command::Join {
            token,
            now_ms,
            reply,
        })
        .await
    }

    pub async fn revoke(
        &self,
        ws: WorkspaceId,
        target: String,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.ask(|reply| Command::Revoke {
            ws,
            target,
            now_ms,
            reply,
        })
        .await
    }

    pub async fn peers(&self) -> Result<Vec<PeerInfo>, StoreError> {
        self.ask(|reply| Command::Peers { reply }).await
    }

    pub async fn contacts(&self) -> Result<Vec<(String, Vec<String>)>, StoreError> {
        self.ask(|reply| Command::Contacts { reply }).await
    }
}

/// The local author's key, from which the store derives its actor id and
/// with which it signs its changes.
#[derive(Debug, Clone)]
pub struct AuthorKey {
    pub peer_id: String,
    pub public_key: [u8; 32],
    pub secret: [u8; 32],
}

#[cfg(test)]
mod tests;
