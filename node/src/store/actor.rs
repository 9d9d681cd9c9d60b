//! The store actor: owns the redb database and every loaded document.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use automerge::{ActorId, ChangeHash};
use redb::{ReadableDatabase, ReadableTableMetadata};
use tokio::sync::mpsc;
use xencode_protocol::api::{
    AuditLog, ChangeOrigin, NodeEvent, SpliceResponse, same_name, validate_workspace_name,
};
use xencode_protocol::{DocId, WorkspaceId};

use ed25519_dalek::SigningKey;
use rand_core::OsRng;
use xencode_protocol::api::Role;
use xencode_protocol::capability::{self, Right};
use xencode_protocol::sync::Input;

use super::audit;
use super::memberships::Memberships;
use super::persist::{Compaction, Persistence, Staged, classify};
use super::sync_driver::SyncDriver;
use super::tables::{AI_CACHE, Membership};
use super::{
    AuthorKey, Command, Forbidden, NetCommand, OpenError, StoreError, StoreOptions, StoreStats,
};
use crate::metrics::Metrics;
use crate::workspace::{Author, NewChange, Workspace, access_doc_id, index_doc_id};

/// The store actor: the loaded workspaces and this node's author, with its
/// three parts — what goes to disk ([`Persistence`]), the sync engine and the
/// network it talks to ([`SyncDriver`]), and this node's memberships
/// ([`Memberships`]) — each in its own file.
pub(super) struct Actor {
    pub(super) disk: Persistence,
    pub(super) sync: SyncDriver,
    pub(super) members: Memberships,
    pub(super) workspaces: BTreeMap<WorkspaceId, Workspace>,
    pub(super) author: Author,
    pub(super) signing: SigningKey,
    pub(super) metrics: Arc<Metrics>,
    pub(super) stats: Arc<StoreStats>,
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
        let disk = Persistence::open(path, options)?;
        let epoch = disk.epoch;
        let actor_bytes = xencode_protocol::ids::actor_id(&author.public_key, epoch);
        let mut actor = Actor {
            disk,
            sync: SyncDriver::new(),
            members: Memberships::new(tokens),
            workspaces: BTreeMap::new(),
            author: Author {
                peer_id: author.peer_id,
                public_key: author.public_key,
                actor: ActorId::from(actor_bytes.as_slice()),
            },
            signing: SigningKey::from_bytes(&author.secret),
            metrics,
            stats,
        };
        actor.members.map = actor
            .disk
            .load_memberships()
            .map_err(|e| actor.corrupt(e))?;
        stats_epoch(&actor.stats, epoch);
        let started = Instant::now();
        let ids = actor.disk.workspace_ids().map_err(|e| actor.corrupt(e))?;
        for id in ids {
            let ws = actor
                .disk
                .load_workspace(id, &actor.author)
                .map_err(|e| actor.corrupt(e))?;
            actor.workspaces.insert(id, ws);
        }
        actor.record_root_token_ids();
        actor.record_own_names();
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

    fn corrupt(&self, detail: impl std::fmt::Display) -> OpenError {
        OpenError::Corrupt {
            path: self.disk.path.clone(),
            detail: detail.to_string(),
        }
    }

    /// Serves commands until every handle is gone. Two queues, local work
    /// first (libp2p's habit): the API's and the CLI's commands never wait
    /// behind a flood of network input, which waits for them instead. A
    /// group of up to `max_group` commands shares one commit.
    ///
    /// Compaction is background work: it runs once the store has been idle
    /// for [`IDLE_BEFORE_COMPACTION`] (a burst of writes does not wait
    /// behind it), or at once when records pile up past
    /// [`Compaction::Overdue`].
    pub(super) fn run(mut self, mut inbox: Inbox) {
        loop {
            let idle = (self.disk.counters.urgency() != Compaction::None)
                .then_some(IDLE_BEFORE_COMPACTION);
            let cmd = match inbox.wait(idle) {
                Next::Command(cmd) => cmd,
                Next::Idle => {
                    self.compact_logged();
                    continue;
                }
                Next::Closed => break,
            };
            self.handle(cmd);
            let mut grouped = 1;
            while grouped < self.disk.options.max_group {
                match inbox.ready() {
                    Some(cmd) => {
                        self.handle(cmd);
                        grouped += 1;
                    }
                    None => break,
                }
            }
            self.settle_engine();
            self.flush();
            if self.disk.counters.urgency() == Compaction::Overdue {
                self.compact_logged();
            }
            self.publish_documents();
        }
        self.settle_engine();
        // Sessions end with the node: their sync states are kept, so the
        // next start resumes the documents in step with each peer instead
        // of syncing every one afresh (`docs/protocol.md`, sessions).
        for peer in self.sync.engine.connected_peers() {
            self.run_engine(Input::Disconnected { peer });
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
                self.disk.defer(made, reply);
            }
            Command::SetDisplayName { name, reply } => {
                self.disk.options.display_name = name;
                self.record_own_names();
                self.disk.defer(Ok(()), reply);
            }
            Command::RemoveWorkspace { ws, reply } => {
                let _ = reply.send(self.remove_workspace(ws));
            }
            Command::RenameWorkspace {
                ws,
                name,
                now_ms,
                reply,
            } => {
                let made = self.rename_workspace(ws, &name, now_ms);
                self.disk.defer(made, reply);
            }
            Command::PutFile {
                ws,
                path,
                bytes,
                now_ms,
                reply,
            } => {
                let new_doc_nonce = random_nonce();
                let max_text = self.disk.options.max_text_bytes;
                let made = self.write(ws, |w, a| {
                    let nonce = new_doc_nonce?;
                    Ok(w.put_file(&path, &bytes, a, now_ms, nonce, max_text)?)
                });
                self.disk.defer(made, reply);
            }
            Command::RemoveFile {
                ws,
                path,
                now_ms,
                reply,
            } => {
                let made = self.write(ws, |w, _| Ok(((), w.remove_file(&path, now_ms)?)));
                self.disk.defer(made, reply);
            }
            Command::Splice {
                ws,
                path,
                base,
                edits,
                now_ms,
                reply,
            } => {
                let answer = |e: crate::workspace::Edited, n: usize| SpliceResponse {
                    path: path.clone(),
                    edits_applied: n,
                    chars: e.chars,
                    heads: hex_heads(&e.heads),
                    mine: base.as_ref().map(|_| hex_heads(&e.mine)),
                    catch_up: base.as_ref().map(|_| e.catch_up.clone()),
                };
                if edits.is_empty() {
                    // Only a catch-up: a read, which a viewer may make too.
                    self.flush();
                    let r = self
                        .workspaces
                        .get_mut(&ws)
                        .ok_or(StoreError::WorkspaceNotFound(ws))
                        .and_then(|w| {
                            Ok(w.edit(&path, base.as_deref(), &[], &self.author, now_ms)?)
                        })
                        .map(|e| answer(e, 0));
                    let _ = reply.send(r);
                } else {
                    let made = self.write(ws, |w, a| {
                        let mut e = w.edit(&path, base.as_deref(), &edits, a, now_ms)?;
                        let changes = std::mem::take(&mut e.changes);
                        Ok((answer(e, edits.len()), changes))
                    });
                    self.disk.defer(made, reply);
                }
            }
            // Reads see only committed state: commit what is staged first.
            Command::ListWorkspaces { reply } => {
                self.flush();
                let me = &self.author.peer_id;
                let now = crate::now_ms();
                let list = self
                    .workspaces
                    .values()
                    .map(|w| w.summary(me, now))
                    .collect();
                let _ = reply.send(Ok(list));
            }
            Command::Workspace { id, reply } => {
                self.flush();
                let me = self.author.peer_id.clone();
                let r = self
                    .workspaces
                    .get_mut(&id)
                    .map(|w| w.detail(&me, crate::now_ms()))
                    .ok_or(StoreError::WorkspaceNotFound(id));
                let _ = reply.send(r);
            }
            Command::ImportFile {
                ws,
                path,
                foreign,
                now_ms,
                reply,
            } => {
                let new_doc_nonce = random_nonce();
                let max_text = self.disk.options.max_text_bytes;
                let made = self.write(ws, |w, a| {
                    foreign.fits(max_text)?;
                    let (file, changes) =
                        w.import_file(&path, &foreign, a, now_ms, new_doc_nonce?)?;
                    let answer = xencode_protocol::api::FileImported {
                        file,
                        versions: foreign.versions.len() as u64,
                        foreign_changes: foreign.changes as u64,
                        foreign_actors: foreign.actors as u64,
                    };
                    Ok((answer, changes))
                });
                self.disk.defer(made, reply);
            }
            Command::ExportFile { ws, path, reply } => {
                let r = self.read(ws, |w| Ok(w.export_file(&path)?));
                let _ = reply.send(r);
            }
            Command::GetFile { ws, path, reply } => {
                let r = self.read(ws, |w| Ok(w.get_file(&path)?));
                let _ = reply.send(r);
            }
            Command::ListFiles { ws, reply } => {
                let r = self.read(ws, |w| Ok(w.list_files()));
                // A store from before schema 7 learns its files' facts here
                // once, instead of loading them at every start's listing.
                if let Some(w) = self.workspaces.get_mut(&ws) {
                    let learned = w.files.take_learned();
                    if let Err(e) = self.disk.keep_facts(&learned) {
                        tracing::warn!(error = %e, "cannot keep the files' listing facts; they are read again next time");
                    }
                }
                // What the listing loaded shows in the gauge with the answer.
                self.publish_documents();
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
                self.disk.defer(made, reply);
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
                self.disk.defer(made, reply);
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
            Command::SetPresence { ws, files } => self.set_presence(ws, files),
            Command::Presence { ws, reply } => {
                let r = self.teammates(ws);
                let _ = reply.send(r);
            }
            Command::Compact { reply } => {
                self.flush();
                let _ = reply.send(self.compact_due(true));
            }
            Command::AuditRefusals { tallies } => self.write_refusals(&tallies),
            Command::Audit { decision } => {
                self.metrics.audit_entry(decision.allow);
                self.disk.audit_staged.push(decision);
            }
            Command::Backup {
                dest,
                now_ms,
                reply,
            } => self.backup(dest, now_ms, reply),
            Command::ReadAudit {
                workspace,
                limit,
                denied_only,
                reply,
            } => {
                let _ = reply.send(self.read_audit(workspace, limit, denied_only));
            }
            Command::Net { input } => {
                if matches!(input, Input::Tick) {
                    self.retry_overflow_disconnects();
                }
                self.run_engine(input);
            }
            Command::AttachNet { tx } => {
                self.sync.net = Some(tx);
                let held: Vec<WorkspaceId> = self.workspaces.keys().copied().collect();
                for workspace in held {
                    self.send_net(NetCommand::Subscribe { workspace });
                }
                self.load_cards();
            }
            Command::OwnAddresses { addrs } => self.sign_own_card(addrs),
            Command::PeerAddress { peer, addr } => {
                let addrs = self.sync.peer_addrs.entry(peer).or_default();
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
                self.disk.defer(made, reply);
            }
            Command::Join {
                token,
                now_ms,
                reply,
            } => {
                let made = self.join(&token, now_ms);
                self.disk.defer(made, reply);
            }
            Command::Revoke {
                ws,
                target,
                now_ms,
                reply,
            } => {
                let made = self.revoke(ws, &target, now_ms);
                self.disk.defer(made, reply);
            }
            Command::Peers { reply } => {
                self.flush();
                let _ = reply.send(Ok(self.peers()));
            }
            Command::Folder(cmd) => self.handle_folder(cmd),
            Command::Contacts { reply } => {
                let _ = reply.send(Ok(self.contacts()));
            }
        }
    }

    /// Runs a mutation on a loaded workspace and stages its changes.
    pub(super) fn write<T>(
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
            return Err(Forbidden::CannotWrite(
                role.map_or("none (not a member, revoked, or expired)", |r| r.as_str()),
            )
            .into());
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
        validate_workspace_name(name)?;
        self.check_name_free(name, None)?;
        let nonce = random_nonce()?;
        let id = WorkspaceId::derive(&self.author.public_key, &nonce);
        let (ws, changes) = Workspace::create(id, &nonce, name, &self.author, now_ms)?;
        let (mut ws, mut changes) = (ws, changes);
        ws.files.set_budget(self.disk.options.loaded_file_docs);
        let summary = ws.summary(&self.author.peer_id, now_ms);
        let token = capability::mint(
            &self.signing.to_bytes(),
            &id,
            &self.peer_id(),
            Role::Admin,
            None,
            &mut OsRng,
        )
        .map_err(StoreError::Minted)?;
        // The root's own token id goes into its entry, so that every node
        // can tell a revocation aimed at it (and refuse it).
        let own = capability::verify(&token, &self.author.public_key, now_ms)
            .map_err(StoreError::Minted)?;
        if let Some(token_id) = own.revocation_ids.last() {
            changes.extend(ws.record_token_id(&self.author.peer_id, token_id, now_ms)?);
        }
        let membership = Membership {
            token,
            root_key: self.author.public_key,
            contacts: Vec::new(),
        };
        self.workspaces.insert(id, ws);
        self.disk.new_workspaces.push(id);
        self.stage_membership(id, membership);
        self.stage_local(id, changes);
        Ok(summary)
    }

    /// Writes this node's display name into its member entry of every
    /// workspace where it is a member in good standing and the entry says
    /// otherwise (staged; the next commit carries it). Run at start, after
    /// the access documents change (a join's arrives) and on a new name.
    pub(super) fn record_own_names(&mut self) {
        let Some(name) = self.disk.options.display_name.clone() else {
            return;
        };
        let me = self.author.peer_id.clone();
        let now = crate::now_ms();
        let ids: Vec<WorkspaceId> = self.workspaces.keys().copied().collect();
        for id in ids {
            let Some(ws) = self.workspaces.get_mut(&id) else {
                continue;
            };
            if ws.effective_role(&me, now).is_none()
                || ws.access_doc().member_name(&me).as_deref() == Some(name.as_str())
            {
                continue;
            }
            match ws.set_own_name(&me, &name, now) {
                Ok(changes) if !changes.is_empty() => self.stage_local(id, changes),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(workspace = %id, error = %e, "cannot record this node's name")
                }
            }
        }
    }

    /// Refuses a name another workspace on this node already has (without
    /// regard to case): names are how people pick a workspace here.
    fn check_name_free(&self, name: &str, except: Option<WorkspaceId>) -> Result<(), StoreError> {
        let taken = self
            .workspaces
            .iter()
            .find(|(id, ws)| Some(**id) != except && same_name(&ws.name(), name));
        match taken {
            Some((id, ws)) => Err(StoreError::NameTaken {
                name: ws.name(),
                id: *id,
            }),
            None => Ok(()),
        }
    }

    /// Renames a workspace for every member (admins only).
    fn rename_workspace(
        &mut self,
        ws_id: WorkspaceId,
        name: &str,
        now_ms: u64,
    ) -> Result<xencode_protocol::api::WorkspaceSummary, StoreError> {
        validate_workspace_name(name)?;
        let ws = self
            .workspaces
            .get(&ws_id)
            .ok_or(StoreError::WorkspaceNotFound(ws_id))?;
        if self.my_role(ws) != Some(Role::Admin) {
            return Err(Forbidden::NotAdmin("rename a workspace").into());
        }
        self.check_name_free(name, Some(ws_id))?;
        let me = self.author.peer_id.clone();
        let ws = self
            .workspaces
            .get_mut(&ws_id)
            .ok_or(StoreError::WorkspaceNotFound(ws_id))?;
        let changes = ws.rename(name.trim(), now_ms)?;
        let summary = ws.summary(&me, now_ms);
        self.stage_local(ws_id, changes);
        Ok(summary)
    }

    /// Forgets a workspace on this node: closes its sync sessions, deletes
    /// every record of it from the store (see
    /// [`Persistence::forget_workspace`]) and records that in the audit
    /// log. Members' copies elsewhere are theirs; nothing is sent to them.
    fn remove_workspace(
        &mut self,
        ws_id: WorkspaceId,
    ) -> Result<xencode_protocol::api::WorkspaceRemoved, StoreError> {
        let Some(ws) = self.workspaces.get(&ws_id) else {
            return Err(StoreError::WorkspaceNotFound(ws_id));
        };
        let name = ws.name();
        let was_owner = ws.is_root(&self.author.peer_id);
        // What waits for a commit goes first: its replies were promised.
        self.flush();
        let Some(ws) = self.workspaces.remove(&ws_id) else {
            return Err(StoreError::WorkspaceNotFound(ws_id));
        };
        self.sync.engine.forget_digest(&ws_id);
        let docs: BTreeSet<DocId> = [ws.access.id, ws.index.id]
            .into_iter()
            .chain(ws.files.into_keys())
            .collect();
        self.members.map.remove(&ws_id);
        self.publish_roles();
        // Sessions for it fail admission now: closed, the peer told.
        self.revalidate_sessions();
        self.disk
            .staged_sync_states
            .retain(|(_, doc, _)| !docs.contains(doc));
        self.disk.staged.retain(|s| s.ws != ws_id);
        self.flush();
        let forgotten = match self.disk.forget_workspace(ws_id, &docs) {
            Ok(f) => f,
            Err(e) => {
                // Nothing was deleted: load it back as it is on disk.
                self.disk.reopen_if_poisoned();
                if let Ok(Some(m)) = self.disk.read_membership(&ws_id) {
                    self.members.map.insert(ws_id, m);
                }
                if let Ok(w) = self.disk.load_workspace(ws_id, &self.author) {
                    self.workspaces.insert(ws_id, w);
                }
                self.sync.engine.forget_digest(&ws_id);
                self.publish_roles();
                return Err(e);
            }
        };
        self.disk.audit_staged.push(audit::Decision {
            at_ms: crate::now_ms(),
            who: "local:node".into(),
            action: "forget a workspace".into(),
            workspace: None,
            allow: true,
            reason: format!(
                "{} documents deleted, {} audit entries redacted",
                forgotten.documents, forgotten.audit_redacted
            ),
        });
        self.flush();
        self.publish_stats();
        self.stats
            .publish(NodeEvent::WorkspaceRemoved { workspace: ws_id });
        tracing::info!(workspace = %ws_id, documents = forgotten.documents, compacted = forgotten.compacted, "workspace removed from this node");
        Ok(xencode_protocol::api::WorkspaceRemoved {
            id: ws_id,
            name,
            was_owner,
            documents: forgotten.documents,
            folders_unlinked: forgotten.folders,
            audit_entries_redacted: forgotten.audit_redacted,
            compacted: forgotten.compacted,
        })
    }

    fn ai_cache_get(&self, key: [u8; 32]) -> Result<Option<String>, StoreError> {
        let db = self.disk.db()?;
        let read = db.begin_read().map_err(classify)?;
        let table = read.open_table(AI_CACHE).map_err(classify)?;
        let value = table.get(key).map_err(classify)?;
        Ok(value.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    /// Caches an answer; the cache is cleared when it reaches its bound (a
    /// cache, so losing it costs only time).
    fn ai_cache_put(&mut self, key: [u8; 32], text: &str) -> Result<(), StoreError> {
        const MAX_ENTRIES: u64 = 10_000;
        let db = self.disk.db()?;
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
    /// A read of workspace `ws`, from committed state (what is staged is
    /// committed first).
    fn read<T>(
        &mut self,
        ws: WorkspaceId,
        f: impl FnOnce(&mut Workspace) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.flush();
        self.workspaces
            .get_mut(&ws)
            .ok_or(StoreError::WorkspaceNotFound(ws))
            .and_then(f)
    }

    pub(super) fn flush(&mut self) {
        if self.disk.is_idle() {
            return;
        }
        let started = Instant::now();
        let result = self.disk.commit_staged();
        let elapsed = started.elapsed();
        let staged = std::mem::take(&mut self.disk.staged);
        let snapshots = std::mem::take(&mut self.disk.staged_snapshots);
        let new_workspaces = std::mem::take(&mut self.disk.new_workspaces);
        let staged_memberships = std::mem::take(&mut self.disk.staged_memberships);
        self.disk.staged_sync_states.clear();
        self.disk.staged_folders.clear();
        let audited = std::mem::take(&mut self.disk.audit_staged);
        let access_changed = staged
            .iter()
            .map(|s| (s.ws, s.change.doc))
            .chain(snapshots.iter().map(|s| (s.ws, s.doc)))
            .any(|(ws, doc)| doc == crate::workspace::access_doc_id(&ws));
        let outcome = match result {
            Ok((bumped, tip)) => {
                self.disk.audit_tip = tip;
                self.metrics.store_commit(elapsed.as_secs_f64(), true);
                let replaced: Vec<DocId> = snapshots.iter().map(|s| s.doc).collect();
                self.disk.snapshotted(&replaced);
                self.disk.count(bumped);
                for snap in &snapshots {
                    // What it parks as, when its turn comes.
                    if let Some(w) = self.workspaces.get_mut(&snap.ws) {
                        w.files.adopt_snapshot(&snap.doc, &snap.saved);
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.metrics.store_commit(elapsed.as_secs_f64(), false);
                tracing::error!(error = %e, lost_audit_entries = audited.len(), "store commit failed; rolling back to the committed state");
                for (ws, _) in &staged_memberships {
                    if let Ok(Some(m)) = self.disk.read_membership(ws) {
                        self.members.map.insert(*ws, m);
                    } else {
                        self.members.map.remove(ws);
                    }
                }
                let touched: BTreeSet<WorkspaceId> = staged
                    .iter()
                    .map(|s| s.ws)
                    .chain(snapshots.iter().map(|s| s.ws))
                    .collect();
                self.recover(&touched, &new_workspaces);
                Err(e)
            }
        };
        // Stats first: a client that got its answer must see them.
        self.publish_stats();
        if access_changed || !new_workspaces.is_empty() || !staged_memberships.is_empty() {
            self.publish_roles();
        }
        for reply in self.disk.deferred.drain(..) {
            reply(outcome.clone());
        }
        if outcome.is_ok() {
            let remote: Vec<(WorkspaceId, DocId)> =
                snapshots.iter().map(|s| (s.ws, s.doc)).collect();
            self.emit_change_events(&staged, &remote, &new_workspaces);
            for workspace in new_workspaces {
                self.send_net(NetCommand::Subscribe { workspace });
            }
            // Committed: now, and only now, offer our own changes to peers.
            let mut local: BTreeMap<(WorkspaceId, DocId), Vec<automerge::Change>> = BTreeMap::new();
            for s in staged.iter().filter(|s| s.local) {
                local
                    .entry((s.ws, s.change.doc))
                    .or_default()
                    .push(s.change.change.clone());
            }
            for ((workspace, doc), changes) in local {
                self.run_engine(Input::LocalChange {
                    workspace,
                    doc,
                    changes,
                });
            }
            if access_changed {
                self.revalidate_sessions();
            }
            if access_changed && self.disk.options.display_name.is_some() {
                // A join's access document may have arrived: name ourselves
                // in it (a no-op when the name is there already).
                self.record_own_names();
                if !self.disk.staged.is_empty() {
                    self.flush();
                }
            }
        }
    }

    /// After a failed commit: reopen the database if it is poisoned, and reload
    /// every workspace the staged changes touched from what is committed.
    fn recover(&mut self, touched: &BTreeSet<WorkspaceId>, new_workspaces: &[WorkspaceId]) {
        self.disk.reopen_if_poisoned();
        for &ws in touched {
            // Reloaded or dropped behind the sync engine's back.
            self.sync.engine.forget_digest(&ws);
            if new_workspaces.contains(&ws) {
                self.members.map.remove(&ws);
                if let Some(w) = self.workspaces.remove(&ws) {
                    for doc in [w.access.id, w.index.id]
                        .into_iter()
                        .chain(w.files.into_keys())
                    {
                        self.disk.counters.remove(&doc);
                    }
                }
                continue;
            }
            match self.disk.load_workspace(ws, &self.author) {
                Ok(w) => {
                    self.workspaces.insert(ws, w);
                }
                Err(e) => {
                    tracing::error!(workspace = %ws, error = %e, "cannot reload workspace after a failed commit")
                }
            }
        }
    }

    /// Compacts what is due; a failure is logged and retried later.
    fn compact_logged(&mut self) {
        if let Err(e) = self.compact_due(false) {
            tracing::warn!(error = %e, "compaction failed; the change records stay and it is retried later");
        }
    }

    /// Folds change records into snapshots ([`Persistence::compact`]).
    fn compact_due(&mut self, all: bool) -> Result<usize, StoreError> {
        let done = self.disk.compact(&mut self.workspaces, all)?;
        if done > 0 {
            self.publish_stats();
        }
        Ok(done)
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
            .disk
            .db()
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
                let _ = reply.send(out.map_err(StoreError::from));
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
            .disk
            .db()
            .and_then(|db| audit::append_refusals(db, tallies).map_err(classify));
        if let Err(e) = written {
            tracing::error!(error = %e, "refusal tallies were not written");
        }
    }

    fn read_audit(
        &mut self,
        workspace: Option<WorkspaceId>,
        limit: usize,
        denied_only: bool,
    ) -> Result<AuditLog, StoreError> {
        // Staged entries first, so the log shows every decision made so far,
        // and the sessions refused to strangers up to now.
        self.flush();
        let pending = self.sync.refusals.take();
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
                return Err(Forbidden::AuditOfOthers(ws).into());
            }
        }
        let db = self.disk.db()?;
        let (entries, chain) = audit::read(db, limit, |entry_ws, allow| {
            let shown = match (workspace, entry_ws) {
                (Some(want), got) => got == Some(want),
                (None, None) => true,
                (None, Some(got)) => admin_of.contains(&got),
            };
            shown && !(denied_only && allow)
        })?;
        // Strangers' refusals are node-wide: shown with the node's log.
        let refusals = if workspace.is_none() {
            audit::read_refusals(db, limit)?
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
    /// `replaced`: documents a peer's chunk replaced (remote changes).
    fn emit_change_events(
        &self,
        staged: &[Staged],
        replaced: &[(WorkspaceId, DocId)],
        new_workspaces: &[WorkspaceId],
    ) {
        for workspace in new_workspaces {
            self.stats.publish(NodeEvent::WorkspaceAdded {
                workspace: *workspace,
            });
        }
        let mut touched: BTreeMap<(WorkspaceId, DocId), bool> =
            staged.iter().fold(BTreeMap::new(), |mut m, s| {
                *m.entry((s.ws, s.change.doc)).or_insert(false) |= !s.local;
                m
            });
        for key in replaced {
            touched.insert(*key, true);
        }
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
        let size = std::fs::metadata(&self.disk.path).map_or(0, |m| m.len());
        self.stats.file_size.store(size, Ordering::Relaxed);
        self.metrics.store_state(self.workspaces.len(), size);
        self.publish_documents();
    }

    /// How many file documents are loaded and parked (O(workspaces)).
    fn publish_documents(&self) {
        let (loaded, all) = self.workspaces.values().fold((0, 0), |(l, a), w| {
            (l + w.files.loaded(), a + w.files.len())
        });
        self.metrics.documents(loaded, all.saturating_sub(loaded));
    }
}

fn stats_epoch(stats: &StoreStats, epoch: u64) {
    stats.epoch.store(epoch, Ordering::Relaxed);
}

pub(super) fn random_nonce() -> Result<[u8; 16], getrandom::Error> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce)?;
    Ok(nonce)
}

/// The actor's two queues: local commands (API, CLI, node) and network
/// input (frames, connections, ticks, peer addresses).
pub(super) struct Inbox {
    pub(super) local: mpsc::Receiver<Command>,
    pub(super) network: mpsc::Receiver<Command>,
}

impl Inbox {
    /// A command ready now, local ones first.
    fn ready(&mut self) -> Option<Command> {
        self.local
            .try_recv()
            .ok()
            .or_else(|| self.network.try_recv().ok())
    }

    /// The next command, local ones first, waiting for one if none is
    /// ready — at most `idle`, if given; [`Next::Closed`] once both queues
    /// are closed and empty.
    fn wait(&mut self, idle: Option<Duration>) -> Next {
        if let Some(cmd) = self.ready() {
            return Next::Command(cmd);
        }
        let (local, network) = (&mut self.local, &mut self.network);
        let (mut local_open, mut network_open) = (!local.is_closed(), !network.is_closed());
        futures::executor::block_on(async {
            // Only when asked for: a timer is registered with the timer
            // thread as it is made, and most waits need none.
            let mut timer = idle.map(futures_timer::Delay::new);
            // Closing (both queues closed and drained): nothing waits for
            // an idle moment.
            while local_open || network_open {
                tokio::select! {
                    biased;
                    cmd = local.recv(), if local_open => match cmd {
                        Some(cmd) => return Next::Command(cmd),
                        None => local_open = false,
                    },
                    cmd = network.recv(), if network_open => match cmd {
                        Some(cmd) => return Next::Command(cmd),
                        None => network_open = false,
                    },
                    () = async {
                        if let Some(t) = timer.as_mut() {
                            t.await;
                        }
                    }, if timer.is_some() => return Next::Idle,
                }
            }
            Next::Closed
        })
    }
}

/// What waiting for a command found.
enum Next {
    Command(Command),
    /// Nothing came for the time given.
    Idle,
    /// Both queues are closed and empty.
    Closed,
}

/// How long the store waits without commands before it compacts.
const IDLE_BEFORE_COMPACTION: Duration = Duration::from_millis(100);

fn hex_heads(heads: &[ChangeHash]) -> Vec<String> {
    heads.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use xencode_protocol::sync::Input;

    use super::*;

    /// A local command is served before network input that was queued
    /// first, and the inbox ends only when both queues are closed and empty.
    #[test]
    fn local_commands_go_before_queued_network_input() {
        let (local_tx, local) = mpsc::channel(8);
        let (net_tx, network) = mpsc::channel(8);
        let mut inbox = Inbox { local, network };
        for _ in 0..3 {
            net_tx
                .try_send(Command::Net { input: Input::Tick })
                .expect("room");
        }
        let (reply, _rx) = tokio::sync::oneshot::channel();
        local_tx
            .try_send(Command::ListWorkspaces { reply })
            .expect("room");
        assert!(matches!(
            inbox.wait(None),
            Next::Command(Command::ListWorkspaces { .. })
        ));
        drop(local_tx);
        for _ in 0..3 {
            assert!(matches!(
                inbox.wait(None),
                Next::Command(Command::Net { .. })
            ));
        }
        // Network input arriving later, from another thread, still wakes it.
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            net_tx
                .try_send(Command::Net { input: Input::Tick })
                .expect("room");
        });
        assert!(matches!(
            inbox.wait(None),
            Next::Command(Command::Net { .. })
        ));
        sender.join().expect("sender");
        assert!(
            matches!(inbox.wait(None), Next::Closed),
            "both queues closed"
        );
    }
}
