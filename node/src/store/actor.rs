//! The store actor: owns the redb database and every loaded document.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use automerge::{ActorId, AutoCommit, Change};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::mpsc;
use xencode_protocol::api::{
    AuditLog, ChangeOrigin, NodeEvent, SpliceResponse, validate_workspace_name,
};
use xencode_protocol::{DocId, WorkspaceId};

use ed25519_dalek::SigningKey;
use rand_core::OsRng;
use xencode_protocol::PeerId;
use xencode_protocol::api::Role;
use xencode_protocol::capability::{self, Right};
use xencode_protocol::envelope::SignedHead;
use xencode_protocol::sync::{Engine, Input, Limits};

use super::audit;
use super::tables::{
    self, AI_CACHE, CHANGES, DOCS, DocRecord, MEMBERSHIPS, Membership, SIGNATURES, SNAPSHOTS,
    SYNC_STATES, WORKSPACES,
};
use super::{AuthorKey, Command, NetCommand, OpenError, StoreError, StoreOptions, StoreStats};
use crate::metrics::Metrics;
use crate::workspace::{Author, Doc, DocKind, NewChange, Workspace, access_doc_id, index_doc_id};

/// Per-document bookkeeping of change records.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    /// Key of the next change record.
    next: u64,
    /// Change records not yet folded into a snapshot.
    pending: u64,
}

/// A reply waiting for the commit that makes its write durable.
type Deferred = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

pub(super) struct Actor {
    pub(super) db: Option<Database>,
    path: PathBuf,
    pub(super) author: Author,
    options: StoreOptions,
    pub(super) metrics: Arc<Metrics>,
    pub(super) stats: Arc<StoreStats>,
    pub(super) workspaces: BTreeMap<WorkspaceId, Workspace>,
    counters: HashMap<DocId, Counters>,
    /// Changes made in memory, not yet committed.
    pub(super) staged: Vec<Staged>,
    pub(super) new_workspaces: Vec<WorkspaceId>,
    pub(super) staged_memberships: Vec<(WorkspaceId, Membership)>,
    pub(super) staged_sync_states: Vec<(String, DocId, Vec<u8>)>,
    deferred: Vec<Deferred>,
    pub(super) signing: SigningKey,
    pub(super) epoch: u64,
    pub(super) memberships: BTreeMap<WorkspaceId, Membership>,
    pub(super) engine: Engine,
    pub(super) net: Option<mpsc::Sender<NetCommand>>,
    pub(super) peer_addrs: BTreeMap<PeerId, Vec<String>>,
    /// Peers whose frames were dropped on a full network queue, to be
    /// disconnected (see `send_net`).
    pub(super) net_overflow: BTreeSet<PeerId>,
    /// Write decisions of the sync engine's host, kept across calls.
    pub(super) write_rule: xencode_protocol::policy::WriteRule,
    /// Authorization decisions waiting for the next commit.
    pub(super) audit_staged: Vec<audit::Decision>,
    /// The audit chain's committed end.
    audit_tip: audit::Tip,
    /// Tokens verified off this thread, and the roots published for it.
    pub(super) tokens: Arc<super::tokens::TokenVerifier>,
    /// Sessions refused to peers that are no members, tallied.
    pub(super) refusals: super::refusals::Refusals,
}

/// A change waiting for the next commit.
pub(super) struct Staged {
    pub ws: WorkspaceId,
    pub change: NewChange,
    pub signatures: Vec<SignedHead>,
    /// Made on this node: announced to peers once committed.
    pub local: bool,
}

/// Opens the store file for writing, after checking read-only that it is a
/// store this build may write: a refused file is never written to.
fn open_database(path: &Path) -> Result<Database, OpenError> {
    tables::check_magic(path)?;
    if path.exists() {
        // redb checks its own invariants with debug assertions; a damaged
        // file must give an error, not take the node down.
        match std::panic::catch_unwind(|| Database::builder().open_read_only(path)) {
            Ok(Ok(ro)) => {
                tables::inspect(&ro, path)?;
            }
            // An unclean shutdown left the file needing a repair, which only
            // a writable open performs; the magic already said it is redb.
            Ok(Err(redb::DatabaseError::RepairAborted)) => {}
            Ok(Err(e)) => return Err(open_error(path, e)),
            Err(_) => return Err(internal_check_failed(path)),
        }
    }
    // Every workspace's content and the node's tokens are in this file:
    // created 0600 (redb would take the umask's mode), and an older store
    // is tightened.
    crate::paths::ensure_private_file(path).map_err(|error| OpenError::Io {
        path: path.to_owned(),
        error,
    })?;
    match std::panic::catch_unwind(|| Database::builder().create(path)) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(e)) => Err(open_error(path, e)),
        Err(_) => Err(internal_check_failed(path)),
    }
}

fn internal_check_failed(path: &Path) -> OpenError {
    OpenError::Corrupt {
        path: path.to_owned(),
        detail: "the storage engine failed an internal check while opening".into(),
    }
}

fn open_error(path: &Path, e: redb::DatabaseError) -> OpenError {
    let path = path.to_owned();
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen => OpenError::InUse { path },
        redb::DatabaseError::Storage(redb::StorageError::Io(e))
            if e.kind() == std::io::ErrorKind::InvalidData =>
        {
            OpenError::NotAStore { path }
        }
        // A file cut short inside redb's header.
        redb::DatabaseError::Storage(redb::StorageError::Io(e))
            if e.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            OpenError::Corrupt {
                path,
                detail: "the file is truncated".into(),
            }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(source)) => OpenError::Io {
            path,
            error: source,
        },
        e => OpenError::Corrupt {
            path,
            detail: e.to_string(),
        },
    }
}

impl Actor {
    pub(super) fn open(
        path: &Path,
        author: AuthorKey,
        options: StoreOptions,
        metrics: Arc<Metrics>,
        stats: Arc<StoreStats>,
        tokens: Arc<super::tokens::TokenVerifier>,
    ) -> Result<Self, OpenError> {
        let db = open_database(path)?;
        let epoch = tables::prepare(&db, path)?;
        let actor_bytes = xencode_protocol::ids::actor_id(&author.public_key, epoch);
        let mut actor = Actor {
            db: Some(db),
            path: path.to_owned(),
            author: Author {
                peer_id: author.peer_id,
                public_key: author.public_key,
                actor: ActorId::from(actor_bytes.as_slice()),
            },
            options,
            metrics,
            stats,
            workspaces: BTreeMap::new(),
            counters: HashMap::new(),
            staged: Vec::new(),
            new_workspaces: Vec::new(),
            staged_memberships: Vec::new(),
            staged_sync_states: Vec::new(),
            deferred: Vec::new(),
            signing: SigningKey::from_bytes(&author.secret),
            epoch,
            memberships: BTreeMap::new(),
            engine: Engine::new(Limits::default()),
            net: None,
            peer_addrs: BTreeMap::new(),
            net_overflow: BTreeSet::new(),
            write_rule: Default::default(),
            audit_staged: Vec::new(),
            audit_tip: audit::Tip::default(),
            tokens,
            refusals: Default::default(),
        };
        if let Some(db) = actor.db.as_ref() {
            actor.audit_tip =
                audit::tip(db).map_err(|e| actor.corrupt(format!("audit log: {e}")))?;
        }
        actor.memberships = actor.load_memberships().map_err(|e| actor.corrupt(e))?;
        stats_epoch(&actor.stats, epoch);
        let started = Instant::now();
        let ids = actor.workspace_ids().map_err(|e| actor.corrupt(e))?;
        for id in ids {
            let ws = actor.load_workspace(id).map_err(|e| actor.corrupt(e))?;
            actor.workspaces.insert(id, ws);
        }
        actor.record_root_token_ids();
        actor.publish_stats();
        actor.publish_roles();
        tracing::info!(
            workspaces = actor.workspaces.len(),
            epoch,
            elapsed_ms = started.elapsed().as_millis() as u64,
            path = %path.display(),
            "store loaded"
        );
        Ok(actor)
    }

    fn corrupt(&self, detail: String) -> OpenError {
        OpenError::Corrupt {
            path: self.path.clone(),
            detail,
        }
    }

    pub(super) fn db(&self) -> Result<&Database, String> {
        self.db
            .as_ref()
            .ok_or_else(|| "the database is closed after an I/O error".to_owned())
    }

    fn workspace_ids(&self) -> Result<Vec<WorkspaceId>, String> {
        let read = self.db()?.begin_read().map_err(|e| e.to_string())?;
        let table = read.open_table(WORKSPACES).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| e.to_string())? {
            let (k, _) = entry.map_err(|e| e.to_string())?;
            out.push(WorkspaceId::from_bytes(k.value()));
        }
        Ok(out)
    }

    /// Loads one workspace from the committed state, resetting its counters.
    pub(super) fn load_workspace(&mut self, id: WorkspaceId) -> Result<Workspace, String> {
        let read = self.db()?.begin_read().map_err(|e| e.to_string())?;
        let docs = read.open_table(DOCS).map_err(|e| e.to_string())?;
        let snapshots = read.open_table(SNAPSHOTS).map_err(|e| e.to_string())?;
        let changes = read.open_table(CHANGES).map_err(|e| e.to_string())?;
        let mut files = BTreeMap::new();
        let mut access = None;
        let mut index = None;
        for entry in docs.iter().map_err(|e| e.to_string())? {
            let (k, v) = entry.map_err(|e| e.to_string())?;
            let record: DocRecord = postcard::from_bytes(v.value())
                .map_err(|e| format!("document record is unreadable: {e}"))?;
            if record.workspace != *id.as_bytes() {
                continue;
            }
            let doc_id = DocId::from_bytes(k.value());
            let (am, counters) = load_doc(&snapshots, &changes, doc_id)?;
            let mut doc = Doc { id: doc_id, am };
            doc.am.set_actor(self.author.actor.clone());
            self.counters.insert(doc_id, counters);
            match record.kind {
                DocKind::Access => access = Some(doc),
                DocKind::Index => index = Some(doc),
                DocKind::File => {
                    files.insert(doc_id, doc);
                }
            }
        }
        // A joined workspace may have no document synced yet.
        let mut ws = Workspace::empty(id, &self.author);
        if let Some(a) = access {
            ws.access = a;
        }
        if let Some(i) = index {
            ws.index = i;
        }
        ws.files = files;
        Ok(ws)
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(cmd) = rx.blocking_recv() {
            self.handle(cmd);
            let mut grouped = 1;
            while grouped < self.options.max_group {
                match rx.try_recv() {
                    Ok(cmd) => {
                        self.handle(cmd);
                        grouped += 1;
                    }
                    Err(_) => break,
                }
            }
            self.flush();
            if let Err(e) = self.compact_due(false) {
                tracing::warn!(error = %e, "compaction failed; the change records stay and it is retried later");
            }
        }
        self.flush();
        tracing::info!("store closed");
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::CreateWorkspace {
                name,
                now_ms,
                reply,
            } => {
                let made = self.create_workspace(&name, now_ms);
                self.defer(made, reply);
            }
            Command::PutFile {
                ws,
                path,
                bytes,
                now_ms,
                reply,
            } => {
                let new_doc_nonce = random_nonce();
                let max_text = self.options.max_text_bytes;
                let made = self.write(ws, |w, a| {
                    let nonce = new_doc_nonce.map_err(StoreError::Storage)?;
                    Ok(w.put_file(&path, &bytes, a, now_ms, nonce, max_text)?)
                });
                self.defer(made, reply);
            }
            Command::RemoveFile {
                ws,
                path,
                now_ms,
                reply,
            } => {
                let made = self.write(ws, |w, _| Ok(((), w.remove_file(&path, now_ms)?)));
                self.defer(made, reply);
            }
            Command::Splice {
                ws,
                path,
                edits,
                now_ms,
                reply,
            } => {
                let made = self.write(ws, |w, a| {
                    let (chars, heads, changes) = w.splice(&path, &edits, a, now_ms)?;
                    let resp = SpliceResponse {
                        path: path.clone(),
                        edits_applied: edits.len(),
                        chars,
                        heads: heads.iter().map(ToString::to_string).collect(),
                    };
                    Ok((resp, changes))
                });
                self.defer(made, reply);
            }
            // Reads see only committed state: commit what is staged first.
            Command::ListWorkspaces { reply } => {
                self.flush();
                let me = &self.author.peer_id;
                let list = self.workspaces.values().map(|w| w.summary(me)).collect();
                let _ = reply.send(Ok(list));
            }
            Command::Workspace { id, reply } => {
                self.flush();
                let me = self.author.peer_id.clone();
                let r = self
                    .workspaces
                    .get_mut(&id)
                    .map(|w| w.detail(&me))
                    .ok_or(StoreError::WorkspaceNotFound(id));
                let _ = reply.send(r);
            }
            Command::GetFile { ws, path, reply } => {
                self.flush();
                let r = self
                    .workspaces
                    .get(&ws)
                    .ok_or(StoreError::WorkspaceNotFound(ws))
                    .and_then(|w| Ok(w.get_file(&path)?));
                let _ = reply.send(r);
            }
            Command::ListFiles { ws, reply } => {
                self.flush();
                let r = self
                    .workspaces
                    .get(&ws)
                    .map(Workspace::list_files)
                    .ok_or(StoreError::WorkspaceNotFound(ws));
                let _ = reply.send(r);
            }
            Command::PutAnalysis {
                ws,
                path,
                record,
                now_ms,
                reply,
            } => {
                let made = self.write(ws, |w, _| Ok(((), w.put_analysis(&path, &record, now_ms)?)));
                self.defer(made, reply);
            }
            Command::AiCacheGet { key, reply } => {
                let _ = reply.send(self.ai_cache_get(key));
            }
            Command::AiCachePut { key, text, reply } => {
                let _ = reply.send(self.ai_cache_put(key, &text));
            }
            Command::PutDocument {
                ws,
                doc,
                path,
                now_ms,
                reply,
            } => {
                let made = self.write(ws, |w, a| {
                    Ok((
                        (),
                        w.put_document(&doc, path.as_deref(), &a.peer_id, now_ms)?,
                    ))
                });
                self.defer(made, reply);
            }
            Command::Documents { ws, reply } => {
                self.flush();
                let r = self
                    .workspaces
                    .get(&ws)
                    .map(Workspace::documents)
                    .ok_or(StoreError::WorkspaceNotFound(ws));
                let _ = reply.send(r);
            }
            Command::Analyses { ws, reply } => {
                self.flush();
                let r = self
                    .workspaces
                    .get(&ws)
                    .map(Workspace::analyses)
                    .ok_or(StoreError::WorkspaceNotFound(ws));
                let _ = reply.send(r);
            }
            Command::Compact { reply } => {
                self.flush();
                let _ = reply.send(self.compact_due(true));
            }
            Command::AuditRefusals { tallies } => self.write_refusals(&tallies),
            Command::Audit { decision } => {
                self.metrics.audit_entry(decision.allow);
                self.audit_staged.push(decision);
            }
            Command::Backup {
                dest,
                now_ms,
                reply,
            } => self.backup(dest, now_ms, reply),
            Command::ReadAudit {
                workspace,
                limit,
                reply,
            } => {
                let _ = reply.send(self.read_audit(workspace, limit));
            }
            Command::Net { input } => {
                if matches!(input, Input::Tick) {
                    self.retry_overflow_disconnects();
                }
                self.run_engine(input);
            }
            Command::AttachNet { tx } => {
                self.net = Some(tx);
                let held: Vec<WorkspaceId> = self.workspaces.keys().copied().collect();
                for workspace in held {
                    self.send_net(NetCommand::Subscribe { workspace });
                }
            }
            Command::PeerAddress { peer, addr } => {
                let addrs = self.peer_addrs.entry(peer).or_default();
                if !addrs.contains(&addr) {
                    addrs.push(addr);
                    if addrs.len() > 8 {
                        addrs.remove(0);
                    }
                }
            }
            Command::Invite {
                ws,
                request,
                addrs,
                now_ms,
                reply,
            } => {
                let made = self.invite(ws, request, addrs, now_ms);
                self.defer(made, reply);
            }
            Command::Join {
                token,
                now_ms,
                reply,
            } => {
                let made = self.join(&token, now_ms);
                self.defer(made, reply);
            }
            Command::Revoke {
                ws,
                target,
                now_ms,
                reply,
            } => {
                let made = self.revoke(ws, &target, now_ms);
                self.defer(made, reply);
            }
            Command::Peers { reply } => {
                self.flush();
                let _ = reply.send(Ok(self.peers()));
            }
            Command::Contacts { reply } => {
                let _ = reply.send(Ok(self.contacts()));
            }
        }
    }

    /// Queues a write's reply until its changes are committed.
    pub(super) fn defer<T: Send + 'static>(
        &mut self,
        made: Result<T, StoreError>,
        reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
    ) {
        match made {
            Ok(value) => self.deferred.push(Box::new(move |committed| {
                let _ = reply.send(committed.map(|()| value));
            })),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Runs a mutation on a loaded workspace and stages its changes.
    fn write<T>(
        &mut self,
        ws: WorkspaceId,
        op: impl FnOnce(&mut Workspace, &Author) -> Result<(T, Vec<NewChange>), StoreError>,
    ) -> Result<T, StoreError> {
        let workspace = self
            .workspaces
            .get_mut(&ws)
            .ok_or(StoreError::WorkspaceNotFound(ws))?;
        // What every node would accept from us now: a write made after our
        // membership expired would be refused everywhere (and everything of
        // ours after it with it).
        let role = workspace.effective_role(&self.author.peer_id, crate::now_ms());
        if !role.is_some_and(|r| r.allows(Right::Write)) {
            return Err(StoreError::Forbidden(format!(
                "your role in this workspace is {}; writing needs developer or admin",
                role.map_or("none (not a member, revoked, or expired)", |r| r.as_str())
            )));
        }
        let (value, changes) = op(workspace, &self.author)?;
        self.stage_local(ws, changes);
        Ok(value)
    }

    fn create_workspace(
        &mut self,
        name: &str,
        now_ms: u64,
    ) -> Result<xencode_protocol::api::WorkspaceSummary, StoreError> {
        validate_workspace_name(name).map_err(StoreError::InvalidName)?;
        let nonce = random_nonce().map_err(StoreError::Storage)?;
        let id = WorkspaceId::derive(&self.author.public_key, &nonce);
        let (ws, changes) = Workspace::create(id, &nonce, name, &self.author, now_ms)?;
        let (mut ws, mut changes) = (ws, changes);
        let summary = ws.summary(&self.author.peer_id);
        let token = capability::mint(
            &self.signing.to_bytes(),
            &id,
            &self.peer_id(),
            Role::Admin,
            None,
            &mut OsRng,
        )
        .map_err(|e| StoreError::Storage(e.to_string()))?;
        // The root's own token id goes into its entry, so that every node
        // can tell a revocation aimed at it (and refuse it).
        let own = capability::verify(&token, &self.author.public_key, now_ms).map_err(|e| {
            StoreError::Storage(format!("a freshly minted token does not verify: {e}"))
        })?;
        if let Some(token_id) = own.revocation_ids.last() {
            changes.extend(ws.record_token_id(&self.author.peer_id, token_id, now_ms)?);
        }
        let membership = Membership {
            token,
            root_key: self.author.public_key,
            contacts: Vec::new(),
        };
        self.workspaces.insert(id, ws);
        self.new_workspaces.push(id);
        self.stage_membership(id, membership);
        self.stage_local(id, changes);
        Ok(summary)
    }

    fn ai_cache_get(&self, key: [u8; 32]) -> Result<Option<String>, StoreError> {
        let db = self.db.as_ref().ok_or_else(closed_db)?;
        let read = db.begin_read().map_err(classify)?;
        let table = read.open_table(AI_CACHE).map_err(classify)?;
        let value = table.get(key).map_err(classify)?;
        Ok(value.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    /// Caches an answer; the cache is cleared when it reaches its bound (a
    /// cache, so losing it costs only time).
    fn ai_cache_put(&mut self, key: [u8; 32], text: &str) -> Result<(), StoreError> {
        const MAX_ENTRIES: u64 = 10_000;
        let db = self.db.as_ref().ok_or_else(closed_db)?;
        let tx = db.begin_write().map_err(classify)?;
        {
            let mut table = tx.open_table(AI_CACHE).map_err(classify)?;
            if table.len().map_err(classify)? >= MAX_ENTRIES {
                table.retain(|_, _| false).map_err(classify)?;
            }
            table.insert(key, text.as_bytes()).map_err(classify)?;
        }
        tx.commit().map_err(classify)?;
        Ok(())
    }

    /// Commits everything staged in one durable transaction, then answers the
    /// deferred replies. On failure, memory is rolled back to what is on disk.
    pub(super) fn flush(&mut self) {
        if self.deferred.is_empty()
            && self.staged.is_empty()
            && self.staged_memberships.is_empty()
            && self.staged_sync_states.is_empty()
            && self.audit_staged.is_empty()
        {
            return;
        }
        let started = Instant::now();
        let result = self.commit_staged();
        let elapsed = started.elapsed();
        let staged = std::mem::take(&mut self.staged);
        let new_workspaces = std::mem::take(&mut self.new_workspaces);
        let staged_memberships = std::mem::take(&mut self.staged_memberships);
        self.staged_sync_states.clear();
        let audited = std::mem::take(&mut self.audit_staged);
        let access_changed = staged
            .iter()
            .any(|s| s.change.doc == crate::workspace::access_doc_id(&s.ws));
        let outcome = match result {
            Ok((bumped, tip)) => {
                self.audit_tip = tip;
                self.metrics.store_commit(elapsed.as_secs_f64(), true);
                for (doc, n) in bumped {
                    let c = self.counters.entry(doc).or_default();
                    c.next += n;
                    c.pending += n;
                }
                Ok(())
            }
            Err(e) => {
                self.metrics.store_commit(elapsed.as_secs_f64(), false);
                tracing::error!(error = %e, lost_audit_entries = audited.len(), "store commit failed; rolling back to the committed state");
                for (ws, _) in &staged_memberships {
                    if let Ok(Some(m)) = self.read_membership(ws) {
                        self.memberships.insert(*ws, m);
                    } else {
                        self.memberships.remove(ws);
                    }
                }
                self.recover(&staged, &new_workspaces);
                Err(e)
            }
        };
        // Stats first: a client that got its answer must see them.
        self.publish_stats();
        if access_changed || !new_workspaces.is_empty() || !staged_memberships.is_empty() {
            self.publish_roles();
        }
        for reply in self.deferred.drain(..) {
            reply(outcome.clone());
        }
        if outcome.is_ok() {
            self.emit_change_events(&staged, &new_workspaces);
            for workspace in new_workspaces {
                self.send_net(NetCommand::Subscribe { workspace });
            }
            // Committed: now, and only now, offer our own changes to peers.
            let local: BTreeSet<(WorkspaceId, DocId)> = staged
                .iter()
                .filter(|s| s.local)
                .map(|s| (s.ws, s.change.doc))
                .collect();
            for (workspace, doc) in local {
                self.run_engine(Input::LocalChange { workspace, doc });
            }
            if access_changed {
                self.revalidate_sessions();
            }
        }
    }

    /// Writes the staged changes and audit entries; returns how many records
    /// each doc got and the audit chain's new end.
    fn commit_staged(&mut self) -> Result<(Vec<(DocId, u64)>, audit::Tip), StoreError> {
        let db = self.db.as_ref().ok_or_else(closed_db)?;
        let mut tx = db.begin_write().map_err(classify)?;
        // Only allowed-read audit entries: durable with the next durable commit.
        let audit_only = self.deferred.is_empty()
            && self.staged.is_empty()
            && self.staged_memberships.is_empty()
            && self.staged_sync_states.is_empty()
            && self.audit_staged.iter().all(|d| d.allow);
        tx.set_durability(if audit_only {
            Durability::None
        } else {
            Durability::Immediate
        })
        .map_err(classify)?;
        let tip = audit::append(&tx, self.audit_tip, &self.audit_staged, audit::MAX_ENTRIES)
            .map_err(classify)?;
        let mut added: BTreeMap<DocId, u64> = BTreeMap::new();
        {
            let mut workspaces = tx.open_table(WORKSPACES).map_err(classify)?;
            for ws in &self.new_workspaces {
                workspaces.insert(*ws.as_bytes(), ()).map_err(classify)?;
            }
            let mut docs = tx.open_table(DOCS).map_err(classify)?;
            let mut changes = tx.open_table(CHANGES).map_err(classify)?;
            let mut signatures = tx.open_table(SIGNATURES).map_err(classify)?;
            for staged in &mut self.staged {
                let (ws, new) = (&staged.ws, &mut staged.change);
                for sig in &staged.signatures {
                    let bytes =
                        postcard::to_stdvec(sig).map_err(|e| StoreError::Storage(e.to_string()))?;
                    signatures
                        .insert((*new.doc.as_bytes(), sig.hash), bytes.as_slice())
                        .map_err(classify)?;
                }
                let counters = self.counters.get(&new.doc).copied();
                if counters.is_none() && !added.contains_key(&new.doc) {
                    let kind = if new.doc == access_doc_id(ws) {
                        DocKind::Access
                    } else if new.doc == index_doc_id(ws) {
                        DocKind::Index
                    } else {
                        DocKind::File
                    };
                    let record = DocRecord {
                        workspace: *ws.as_bytes(),
                        kind,
                    };
                    let bytes = postcard::to_stdvec(&record)
                        .map_err(|e| StoreError::Storage(e.to_string()))?;
                    docs.insert(*new.doc.as_bytes(), bytes.as_slice())
                        .map_err(classify)?;
                }
                let n = added.entry(new.doc).or_default();
                let key = counters.map_or(0, |c| c.next) + *n;
                *n += 1;
                changes
                    .insert((*new.doc.as_bytes(), key), new.change.bytes().as_ref())
                    .map_err(classify)?;
            }
            let mut memberships = tx.open_table(MEMBERSHIPS).map_err(classify)?;
            for (ws, m) in &self.staged_memberships {
                let bytes =
                    postcard::to_stdvec(m).map_err(|e| StoreError::Storage(e.to_string()))?;
                memberships
                    .insert(*ws.as_bytes(), bytes.as_slice())
                    .map_err(classify)?;
            }
            let mut states = tx.open_table(SYNC_STATES).map_err(classify)?;
            for (peer, doc, state) in &self.staged_sync_states {
                states
                    .insert((peer.as_str(), *doc.as_bytes()), state.as_slice())
                    .map_err(classify)?;
            }
        }
        tx.commit().map_err(classify)?;
        Ok((added.into_iter().collect(), tip))
    }

    /// After a failed commit: reopen the database if it is poisoned, and reload
    /// every workspace the staged changes touched from what is committed.
    fn recover(&mut self, staged: &[Staged], new_workspaces: &[WorkspaceId]) {
        let needs_reopen = self.db.as_ref().is_none_or(|db| !usable(db));
        if needs_reopen {
            self.db = None;
            match open_database(&self.path) {
                Ok(db) => self.db = Some(db),
                Err(e) => {
                    tracing::error!(error = %e, "cannot reopen the store; writes fail until it can")
                }
            }
        }
        let touched: BTreeSet<WorkspaceId> = staged.iter().map(|s| s.ws).collect();
        for ws in touched {
            if new_workspaces.contains(&ws) {
                self.memberships.remove(&ws);
                if let Some(w) = self.workspaces.remove(&ws) {
                    for doc in [w.access.id, w.index.id]
                        .into_iter()
                        .chain(w.files.into_keys())
                    {
                        self.counters.remove(&doc);
                    }
                }
                continue;
            }
            match self.load_workspace(ws) {
                Ok(w) => {
                    self.workspaces.insert(ws, w);
                }
                Err(e) => {
                    tracing::error!(workspace = %ws, error = %e, "cannot reload workspace after a failed commit")
                }
            }
        }
    }

    /// Folds change records into snapshots: every document with any when
    /// `all`, else those past the configured threshold. Returns how many.
    fn compact_due(&mut self, all: bool) -> Result<usize, StoreError> {
        let threshold = if all {
            1
        } else {
            self.options.compact_after_changes
        };
        let due: Vec<DocId> = self
            .counters
            .iter()
            .filter(|(_, c)| c.pending >= threshold)
            .map(|(d, _)| *d)
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let db = self.db.as_ref().ok_or_else(closed_db)?;
        let mut tx = db.begin_write().map_err(classify)?;
        tx.set_durability(Durability::Immediate).map_err(classify)?;
        {
            let mut snapshots = tx.open_table(SNAPSHOTS).map_err(classify)?;
            let mut changes = tx.open_table(CHANGES).map_err(classify)?;
            for doc_id in &due {
                let Some(doc) = self
                    .workspaces
                    .values_mut()
                    .flat_map(Workspace::docs_mut)
                    .find(|d| d.id == *doc_id)
                else {
                    continue;
                };
                let Some(saved) = verified_snapshot(&mut doc.am) else {
                    // Keep the change records: they still load one by one.
                    tracing::error!(
                        doc = %doc_id,
                        "the document's snapshot does not load back; it is kept as change records"
                    );
                    continue;
                };
                let next = self.counters.get(doc_id).map_or(0, |c| c.next);
                let upto = next.saturating_sub(1);
                snapshots
                    .insert(*doc_id.as_bytes(), (upto, saved.as_slice()))
                    .map_err(classify)?;
                changes
                    .retain_in(
                        (*doc_id.as_bytes(), 0)..(*doc_id.as_bytes(), next),
                        |_, _| false,
                    )
                    .map_err(classify)?;
            }
        }
        tx.commit().map_err(classify)?;
        for doc in &due {
            if let Some(c) = self.counters.get_mut(doc) {
                c.pending = 0;
            }
        }
        tracing::debug!(
            documents = due.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted"
        );
        self.publish_stats();
        Ok(due.len())
    }

    /// Starts a backup from a read transaction taken after committing
    /// everything staged; the copy runs on its own thread.
    fn backup(
        &mut self,
        dest: PathBuf,
        now_ms: u64,
        reply: tokio::sync::oneshot::Sender<Result<super::backup::BackupInfo, StoreError>>,
    ) {
        self.flush();
        let snapshot = match self
            .db
            .as_ref()
            .ok_or_else(closed_db)
            .and_then(|db| db.begin_read().map_err(classify))
        {
            Ok(tx) => tx,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let peer_id = self.author.peer_id.clone();
        let spawned = std::thread::Builder::new()
            .name("xencode-backup".into())
            .spawn(move || {
                let out = super::backup::write(&snapshot, &dest, &peer_id, now_ms);
                if out.is_err() {
                    let _ = std::fs::remove_file(&dest);
                }
                let _ = reply.send(out.map_err(StoreError::Storage));
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the backup thread");
        }
    }

    /// Writes tallies of strangers' refusals to their own table.
    pub(super) fn write_refusals(&self, tallies: &[xencode_protocol::api::RefusalCount]) {
        if tallies.is_empty() {
            return;
        }
        let written = self
            .db
            .as_ref()
            .ok_or_else(closed_db)
            .and_then(|db| audit::append_refusals(db, tallies).map_err(classify));
        if let Err(e) = written {
            tracing::error!(error = %e, "refusal tallies were not written");
        }
    }

    fn read_audit(
        &mut self,
        workspace: Option<WorkspaceId>,
        limit: usize,
    ) -> Result<AuditLog, StoreError> {
        // Staged entries first, so the log shows every decision made so far,
        // and the sessions refused to strangers up to now.
        self.flush();
        let pending = self.refusals.take();
        self.write_refusals(&pending);
        let me = self.author.peer_id.clone();
        let admin_of: BTreeSet<WorkspaceId> = self
            .workspaces
            .values()
            .filter(|ws| ws.role_of(&me) == Some(Role::Admin))
            .map(|ws| ws.id)
            .collect();
        if let Some(ws) = workspace {
            if !self.workspaces.contains_key(&ws) {
                return Err(StoreError::WorkspaceNotFound(ws));
            }
            if !admin_of.contains(&ws) {
                return Err(StoreError::Forbidden(format!(
                    "the audit log of workspace {ws} is for its admins; this node is not one"
                )));
            }
        }
        let db = self.db.as_ref().ok_or_else(closed_db)?;
        let (entries, chain) = audit::read(db, limit, |entry_ws| match (workspace, entry_ws) {
            (Some(want), got) => got == Some(want),
            (None, None) => true,
            (None, Some(got)) => admin_of.contains(&got),
        })
        .map_err(StoreError::Storage)?;
        // Strangers' refusals are node-wide: shown with the node's log.
        let refusals = if workspace.is_none() {
            audit::read_refusals(db, limit).map_err(StoreError::Storage)?
        } else {
            Vec::new()
        };
        Ok(AuditLog {
            entries,
            chain,
            refusals,
        })
    }

    /// Tells event subscribers what the commit just made durable: one event
    /// per document touched.
    fn emit_change_events(&self, staged: &[Staged], new_workspaces: &[WorkspaceId]) {
        for workspace in new_workspaces {
            self.stats.publish(NodeEvent::WorkspaceAdded {
                workspace: *workspace,
            });
        }
        let touched: BTreeMap<(WorkspaceId, DocId), bool> =
            staged.iter().fold(BTreeMap::new(), |mut m, s| {
                *m.entry((s.ws, s.change.doc)).or_insert(false) |= !s.local;
                m
            });
        for ((workspace, doc), remote) in touched {
            let origin = if remote {
                ChangeOrigin::Remote
            } else {
                ChangeOrigin::Local
            };
            let event = if doc == access_doc_id(&workspace) {
                NodeEvent::AccessChanged { workspace, origin }
            } else if doc == index_doc_id(&workspace) {
                NodeEvent::IndexChanged { workspace, origin }
            } else {
                let Some(path) = self
                    .workspaces
                    .get(&workspace)
                    .and_then(|ws| ws.path_of_doc(&doc))
                else {
                    // A file document the index does not name (yet).
                    continue;
                };
                NodeEvent::FileChanged {
                    workspace,
                    path,
                    origin,
                }
            };
            self.stats.publish(event);
        }
    }

    fn publish_stats(&self) {
        self.stats
            .workspaces
            .store(self.workspaces.len(), Ordering::Relaxed);
        let size = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        self.stats.file_size.store(size, Ordering::Relaxed);
        self.metrics.store_state(self.workspaces.len(), size);
    }

    /// Workspaces this node created before root token ids were recorded:
    /// record its token's id in its own member entry now (staged; written
    /// with the first commit).
    fn record_root_token_ids(&mut self) {
        let me = self.author.peer_id.clone();
        let now = crate::now_ms();
        let ids: Vec<WorkspaceId> = self.workspaces.keys().copied().collect();
        for id in ids {
            let (Some(ws), Some(m)) = (self.workspaces.get_mut(&id), self.memberships.get(&id))
            else {
                continue;
            };
            if !ws.is_root(&me) || ws.member_token_id(&me).is_some() {
                continue;
            }
            let Some(token_id) = capability::verify(&m.token, &m.root_key, now)
                .ok()
                .and_then(|v| v.revocation_ids.last().cloned())
            else {
                continue;
            };
            match ws.record_token_id(&me, &token_id, now) {
                Ok(changes) => self.stage_local(id, changes),
                Err(e) => {
                    tracing::warn!(workspace = %id, error = %e, "the root's token id was not recorded")
                }
            }
        }
    }

    /// Shares this node's role in each workspace (for the event stream's
    /// filter) and each workspace's root key (for the token verifier); only
    /// access documents, memberships and new workspaces change them.
    pub(super) fn publish_roles(&self) {
        let roots = self
            .workspaces
            .values()
            .filter_map(|ws| Some((ws.id, super::host::root_key(ws, &self.memberships)?)))
            .collect();
        self.tokens.set_roots(roots);
        let roles: BTreeMap<WorkspaceId, Role> = self
            .workspaces
            .values()
            .filter_map(|ws| Some((ws.id, ws.role_of(&self.author.peer_id)?)))
            .collect();
        if let Ok(mut shared) = self.stats.roles.write() {
            *shared = roles;
        }
    }
}

fn stats_epoch(stats: &StoreStats, epoch: u64) {
    stats.epoch.store(epoch, Ordering::Relaxed);
}

/// The document saved as a snapshot, if the snapshot loads back with the
/// same heads. Crafted changes a member sent (found by fuzzing) can leave a
/// document whose saved form no longer loads; writing it in place of the
/// change records would lose the document at the next start.
pub(super) fn verified_snapshot(am: &mut AutoCommit) -> Option<Vec<u8>> {
    let heads = am.get_heads();
    let saved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| am.save())).ok()?;
    let loaded = std::panic::catch_unwind(|| AutoCommit::load(&saved).map(|mut d| d.get_heads()));
    matches!(loaded, Ok(Ok(h)) if h == heads).then_some(saved)
}

/// Loads a document: its snapshot, then its change records in one batch.
fn load_doc(
    snapshots: &redb::ReadOnlyTable<[u8; 16], (u64, &[u8])>,
    changes: &redb::ReadOnlyTable<([u8; 16], u64), &[u8]>,
    id: DocId,
) -> Result<(AutoCommit, Counters), String> {
    let key = *id.as_bytes();
    let (mut am, first) = match snapshots.get(key).map_err(|e| e.to_string())? {
        Some(v) => {
            let (upto, data) = v.value();
            let am = std::panic::catch_unwind(|| AutoCommit::load(data))
                .map_err(|_| {
                    format!("snapshot of document {id} is unreadable (Automerge panicked)")
                })?
                .map_err(|e| format!("snapshot of document {id} is unreadable: {e}"))?;
            (am, upto + 1)
        }
        None => (AutoCommit::new(), 0),
    };
    let mut batch = Vec::new();
    let mut next = first;
    for entry in changes
        .range((key, 0)..=(key, u64::MAX))
        .map_err(|e| e.to_string())?
    {
        let (k, v) = entry.map_err(|e| e.to_string())?;
        let change = Change::from_bytes(v.value().to_vec())
            .map_err(|e| format!("a change of document {id} is unreadable: {e}"))?;
        batch.push(change);
        next = k.value().1 + 1;
    }
    let pending = batch.len() as u64;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| am.apply_changes(batch)))
        .map_err(|_| format!("changes of document {id} do not apply (Automerge panicked)"))?
        .map_err(|e| format!("changes of document {id} do not apply: {e}"))?;
    Ok((am, Counters { next, pending }))
}

fn closed_db() -> StoreError {
    StoreError::Storage("the database is closed after an I/O error".into())
}

/// Whether the database still accepts write transactions.
fn usable(db: &Database) -> bool {
    match db.begin_write() {
        Ok(tx) => tx.abort().is_ok(),
        Err(_) => false,
    }
}

pub(super) fn random_nonce() -> Result<[u8; 16], String> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| format!("the OS random source failed: {e}"))?;
    Ok(nonce)
}

/// Maps a redb failure to what the user is told.
pub(super) fn classify(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match &e {
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => StoreError::DiskFull,
        _ => StoreError::Storage(e.to_string()),
    }
}
