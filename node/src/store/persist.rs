//! The store actor's persistence: the redb database and everything waiting
//! for its next commit — staged changes, memberships and sync states,
//! deferred replies, audit decisions — with the per-document record
//! counters and the audit chain's end. Nothing here knows about sync or
//! memberships' meaning: it writes what it is given, in one durable
//! transaction per group, and folds change records into snapshots.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use automerge::{AutoCommit, Change};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use xencode_protocol::envelope::SignedHead;
use xencode_protocol::{DocId, WorkspaceId};

use super::audit;
use super::tables::{
    self, AI_CACHE, CHANGES, DOCS, DocRecord, FILE_FACTS, MEMBERSHIPS, Membership, SIGNATURES,
    SNAPSHOTS, SYNC_STATES, WORKSPACES,
};
use super::{OpenError, StoreError, StoreOptions};
use crate::workspace::parking::{FileDocs, saved_heads};
use crate::workspace::{Author, Doc, DocKind, NewChange, Workspace, access_doc_id, index_doc_id};

/// Why something stored could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Storage(#[from] redb::Error),
    #[error("a stored record is unreadable: {0}")]
    Record(#[from] postcard::Error),
    #[error("document {doc}: {problem}: {detail}")]
    Document {
        doc: DocId,
        problem: &'static str,
        detail: String,
    },
}

impl LoadError {
    fn document(doc: DocId, problem: &'static str, detail: impl std::fmt::Display) -> Self {
        LoadError::Document {
            doc,
            problem,
            detail: detail.to_string(),
        }
    }
}

/// The database and what waits for its next commit.
pub(super) struct Persistence {
    /// `None` after an I/O error poisoned it, until it reopens.
    pub(super) db: Option<Database>,
    pub(super) path: PathBuf,
    pub(super) options: StoreOptions,
    /// Per document: the next change record's key, and records not yet
    /// folded into a snapshot.
    pub(super) counters: RecordCounts,
    /// Changes made in memory, not yet committed.
    pub(super) staged: Vec<Staged>,
    /// Documents replaced whole by a peer's checked chunk, not yet committed.
    pub(super) staged_snapshots: Vec<StagedSnapshot>,
    pub(super) new_workspaces: Vec<WorkspaceId>,
    pub(super) staged_memberships: Vec<(WorkspaceId, Membership)>,
    pub(super) staged_sync_states: Vec<(String, DocId, Vec<u8>)>,
    /// Folder links and sync records (`folders.rs`).
    pub(super) staged_folders: Vec<super::folders::FolderWrite>,
    /// Replies waiting for the commit that makes their write durable.
    pub(super) deferred: Vec<Deferred>,
    /// Authorization decisions waiting for the next commit.
    pub(super) audit_staged: Vec<audit::Decision>,
    /// The audit chain's committed end.
    pub(super) audit_tip: audit::Tip,
    /// This store's actor epoch (a restore starts a new one).
    pub(super) epoch: u64,
}

impl Persistence {
    /// Opens (after checking) the store file at `path`.
    pub(super) fn open(path: &Path, options: StoreOptions) -> Result<Self, OpenError> {
        let db = open_database(path)?;
        let epoch = tables::prepare(&db, path)?;
        let audit_tip = audit::tip(&db).map_err(|e| OpenError::Corrupt {
            path: path.to_owned(),
            detail: format!("audit log: {e}"),
        })?;
        Ok(Self {
            db: Some(db),
            path: path.to_owned(),
            counters: RecordCounts::new(options.compact_after_changes),
            options,
            staged: Vec::new(),
            staged_snapshots: Vec::new(),
            new_workspaces: Vec::new(),
            staged_memberships: Vec::new(),
            staged_sync_states: Vec::new(),
            staged_folders: Vec::new(),
            deferred: Vec::new(),
            audit_staged: Vec::new(),
            audit_tip,
            epoch,
        })
    }

    /// Whether nothing waits for a commit.
    pub(super) fn is_idle(&self) -> bool {
        self.only_audit_staged() && self.audit_staged.is_empty()
    }

    /// Whether nothing but audit entries waits for a commit.
    fn only_audit_staged(&self) -> bool {
        self.deferred.is_empty()
            && self.staged.is_empty()
            && self.staged_snapshots.is_empty()
            && self.staged_memberships.is_empty()
            && self.staged_sync_states.is_empty()
            && self.staged_folders.is_empty()
    }

    /// After a commit: the documents whose snapshots it wrote have no
    /// records left but those it added.
    pub(super) fn snapshotted(&mut self, docs: &[DocId]) {
        for doc in docs {
            self.counters.folded(doc);
        }
    }

    /// Records how many change records each document got in a commit.
    pub(super) fn count(&mut self, bumped: Vec<(DocId, u64)>) {
        for (doc, n) in bumped {
            self.counters.bump(doc, n);
        }
    }

    /// After a failed commit: reopens the database if redb poisoned it.
    pub(super) fn reopen_if_poisoned(&mut self) {
        if self.db.as_ref().is_none_or(|db| !usable(db)) {
            self.db = None;
            match open_database(&self.path) {
                Ok(db) => self.db = Some(db),
                Err(e) => {
                    tracing::error!(error = %e, "cannot reopen the store; writes fail until it can")
                }
            }
        }
    }

    /// The database, unless an I/O error closed it.
    pub(super) fn db(&self) -> Result<&Database, StoreError> {
        self.db.as_ref().ok_or(StoreError::DatabaseClosed)
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

    /// Every workspace the store holds.
    pub(super) fn workspace_ids(&self) -> Result<Vec<WorkspaceId>, LoadError> {
        let read = self.db()?.begin_read().map_err(redb::Error::from)?;
        let table = read.open_table(WORKSPACES).map_err(redb::Error::from)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(redb::Error::from)? {
            let (k, _) = entry.map_err(redb::Error::from)?;
            out.push(WorkspaceId::from_bytes(k.value()));
        }
        Ok(out)
    }

    /// Loads one workspace from the committed state, resetting its counters.
    pub(super) fn load_workspace(
        &mut self,
        id: WorkspaceId,
        author: &Author,
    ) -> Result<Workspace, LoadError> {
        let read = self.db()?.begin_read().map_err(redb::Error::from)?;
        let docs = read.open_table(DOCS).map_err(redb::Error::from)?;
        let snapshots = read.open_table(SNAPSHOTS).map_err(redb::Error::from)?;
        let changes = read.open_table(CHANGES).map_err(redb::Error::from)?;
        // A cache: a store restored from a backup made before it has none.
        let facts = read.open_table(FILE_FACTS).ok();
        let mut files = FileDocs::with_budget(self.options.loaded_file_docs);
        let mut access = None;
        let mut index = None;
        // Documents to rebuild from their stored bytes: read here, built
        // by Automerge on every core at once (`build_docs`).
        let mut to_build: Vec<(DocKind, StoredDoc)> = Vec::new();
        for entry in docs.iter().map_err(redb::Error::from)? {
            let (k, v) = entry.map_err(redb::Error::from)?;
            let record: DocRecord = postcard::from_bytes(v.value())?;
            if record.workspace != *id.as_bytes() {
                continue;
            }
            let doc_id = DocId::from_bytes(k.value());
            // A file document folded into its snapshot is parked as that
            // snapshot: loaded when first used, not at start.
            if record.kind == DocKind::File
                && let Some((saved, heads, counters)) = parked_doc(&snapshots, &changes, doc_id)?
            {
                self.counters.set(doc_id, counters);
                let known = facts.as_ref().and_then(|t| {
                    let v = t.get(k.value()).ok()??;
                    postcard::from_bytes(v.value()).ok()
                });
                files.insert_parked(doc_id, saved, heads, author.actor.clone(), known);
                continue;
            }
            to_build.push((record.kind, read_doc(&snapshots, &changes, doc_id)?));
        }
        for (kind, built) in build_docs(to_build) {
            let (doc_id, am, counters) = built?;
            let mut doc = Doc { id: doc_id, am };
            doc.am.set_actor(author.actor.clone());
            self.counters.set(doc_id, counters);
            match kind {
                DocKind::Access => access = Some(doc),
                DocKind::Index => index = Some(doc),
                DocKind::File => files.insert(doc),
            }
        }
        // A joined workspace may have no document synced yet.
        let mut ws = Workspace::empty(id, author);
        if let Some(a) = access {
            ws.access = a;
        }
        if let Some(i) = index {
            ws.index = i;
        }
        ws.files = files;
        Ok(ws)
    }

    /// The sync states saved for `peer` (where its sessions ended), by
    /// document, as committed.
    pub(super) fn sync_states_of(&self, peer: &str) -> Result<HashMap<DocId, Vec<u8>>, LoadError> {
        let read = self.db()?.begin_read().map_err(redb::Error::from)?;
        let table = read.open_table(SYNC_STATES).map_err(redb::Error::from)?;
        let mut out = HashMap::new();
        for entry in table
            .range((peer, [0u8; 16])..=(peer, [0xff; 16]))
            .map_err(redb::Error::from)?
        {
            let (k, v) = entry.map_err(redb::Error::from)?;
            out.insert(DocId::from_bytes(k.value().1), v.value().to_vec());
        }
        Ok(out)
    }

    /// This node's memberships, as committed.
    pub(super) fn load_memberships(&self) -> Result<BTreeMap<WorkspaceId, Membership>, LoadError> {
        let read = self.db()?.begin_read().map_err(redb::Error::from)?;
        let table = read.open_table(MEMBERSHIPS).map_err(redb::Error::from)?;
        let mut out = BTreeMap::new();
        for entry in table.iter().map_err(redb::Error::from)? {
            let (k, v) = entry.map_err(redb::Error::from)?;
            let m: Membership = postcard::from_bytes(v.value())?;
            out.insert(WorkspaceId::from_bytes(k.value()), m);
        }
        Ok(out)
    }

    /// One membership, as committed.
    pub(super) fn read_membership(
        &self,
        ws: &WorkspaceId,
    ) -> Result<Option<Membership>, LoadError> {
        let read = self.db()?.begin_read().map_err(redb::Error::from)?;
        let table = read.open_table(MEMBERSHIPS).map_err(redb::Error::from)?;
        let value = table.get(*ws.as_bytes()).map_err(redb::Error::from)?;
        value
            .map(|v| postcard::from_bytes(v.value()).map_err(LoadError::from))
            .transpose()
    }

    /// Folds change records into snapshots: every document with any when
    /// `all`, else those past the configured threshold. Returns how many.
    pub(super) fn compact(
        &mut self,
        workspaces: &mut BTreeMap<WorkspaceId, Workspace>,
        all: bool,
    ) -> Result<usize, StoreError> {
        let due = self.counters.due(all);
        if due.is_empty() {
            return Ok(0);
        }
        let started = Instant::now();
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(classify)?;
        tx.set_durability(Durability::Immediate).map_err(classify)?;
        {
            let mut snapshots = tx.open_table(SNAPSHOTS).map_err(classify)?;
            let mut changes = tx.open_table(CHANGES).map_err(classify)?;
            let mut facts = tx.open_table(FILE_FACTS).map_err(classify)?;
            for doc_id in &due {
                // By id, not by walking every document: compaction must not
                // cost more because the workspace holds more files.
                let Some((saved, file_facts)) = workspaces.values_mut().find_map(|w| {
                    let saved = w.snapshot(doc_id)?;
                    Some((saved, w.files.known_facts(doc_id)))
                }) else {
                    continue;
                };
                let Some(saved) = saved else {
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
                if let Some(f) = file_facts.and_then(|f| postcard::to_allocvec(&f).ok()) {
                    facts
                        .insert(*doc_id.as_bytes(), f.as_slice())
                        .map_err(classify)?;
                }
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
            self.counters.folded(doc);
        }
        // The snapshots just written are what idle documents park as.
        for w in workspaces.values_mut() {
            w.files.make_room();
        }
        tracing::debug!(
            documents = due.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "compacted"
        );
        Ok(due.len())
    }

    /// Keeps the listing facts of file documents (one commit for all that a
    /// listing learned; each document's are learned once).
    pub(super) fn keep_facts(
        &mut self,
        facts: &[(DocId, crate::workspace::parking::Facts)],
    ) -> Result<(), StoreError> {
        if facts.is_empty() {
            return Ok(());
        }
        let db = self.db()?;
        let tx = db.begin_write().map_err(classify)?;
        {
            let mut table = tx.open_table(FILE_FACTS).map_err(classify)?;
            for (doc, f) in facts {
                let bytes = postcard::to_stdvec(f)?;
                table
                    .insert(*doc.as_bytes(), bytes.as_slice())
                    .map_err(classify)?;
            }
        }
        tx.commit().map_err(classify)
    }

    /// Writes the staged changes and audit entries; returns how many records
    /// each doc got and the audit chain's new end.
    pub(super) fn commit_staged(&mut self) -> Result<(Vec<(DocId, u64)>, audit::Tip), StoreError> {
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(classify)?;
        // Only allowed-read audit entries: durable with the next durable commit.
        let audit_only = self.only_audit_staged() && self.audit_staged.iter().all(|d| d.allow);
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
            // Snapshots first: they replace the records committed before
            // this transaction; changes staged in it are written after
            // (those it already holds load again as duplicates, which
            // Automerge skips).
            let mut snapshots = tx.open_table(SNAPSHOTS).map_err(classify)?;
            for snap in &self.staged_snapshots {
                let key = *snap.doc.as_bytes();
                put_signatures(&mut signatures, key, &snap.signatures)?;
                let next = match self.counters.get(&snap.doc) {
                    Some(c) => c.next,
                    None => {
                        let record = DocRecord {
                            workspace: *snap.ws.as_bytes(),
                            kind: doc_kind(&snap.ws, &snap.doc),
                        };
                        let bytes = postcard::to_stdvec(&record)?;
                        docs.insert(key, bytes.as_slice()).map_err(classify)?;
                        0
                    }
                };
                snapshots
                    .insert(key, (next.saturating_sub(1), snap.saved.as_slice()))
                    .map_err(classify)?;
                changes
                    .retain_in((key, 0)..(key, next), |_, _| false)
                    .map_err(classify)?;
            }
            drop(snapshots);
            for staged in &mut self.staged {
                let (ws, new) = (&staged.ws, &mut staged.change);
                put_signatures(&mut signatures, *new.doc.as_bytes(), &staged.signatures)?;
                let counters = self.counters.get(&new.doc);
                let snapshotted = self.staged_snapshots.iter().any(|s| s.doc == new.doc);
                if counters.is_none() && !added.contains_key(&new.doc) && !snapshotted {
                    let record = DocRecord {
                        workspace: *ws.as_bytes(),
                        kind: doc_kind(ws, &new.doc),
                    };
                    let bytes = postcard::to_stdvec(&record)?;
                    docs.insert(*new.doc.as_bytes(), bytes.as_slice())
                        .map_err(classify)?;
                }
                let n = added.entry(new.doc).or_default();
                let key = counters.map_or(0, |c| c.next) + *n;
                *n += 1;
                changes
                    .insert(
                        (*new.doc.as_bytes(), key),
                        stored_form(&mut new.change).as_ref(),
                    )
                    .map_err(classify)?;
            }
            let mut memberships = tx.open_table(MEMBERSHIPS).map_err(classify)?;
            for (ws, m) in &self.staged_memberships {
                let bytes = postcard::to_stdvec(m)?;
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
        super::folders::commit(&tx, &self.staged_folders)?;
        tx.commit().map_err(classify)?;
        Ok((added.into_iter().collect(), tip))
    }
}

/// What [`Persistence::forget_workspace`] deleted.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Forgotten {
    pub documents: usize,
    pub folders: usize,
    pub audit_redacted: u64,
    pub compacted: bool,
}

impl Persistence {
    /// Deletes every record of workspace `ws` in one durable transaction —
    /// its documents (those in `docs` and any other `docs-1` names as its),
    /// change records, snapshots, signatures, sync states, membership,
    /// folder links and their sync records — redacts the audit entries
    /// about it, clears the AI answer cache (answers may quote its files),
    /// then compacts the file so no freed page keeps its bytes. Nothing
    /// may be staged (the caller flushed).
    pub(super) fn forget_workspace(
        &mut self,
        ws: WorkspaceId,
        docs: &std::collections::BTreeSet<DocId>,
    ) -> Result<Forgotten, StoreError> {
        let mut out = Forgotten::default();
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(classify)?;
        tx.set_durability(Durability::Immediate).map_err(classify)?;
        let mut gone: std::collections::BTreeSet<[u8; 16]> =
            docs.iter().map(|d| *d.as_bytes()).collect();
        {
            tx.open_table(WORKSPACES)
                .map_err(classify)?
                .remove(*ws.as_bytes())
                .map_err(classify)?;
            tx.open_table(MEMBERSHIPS)
                .map_err(classify)?
                .remove(*ws.as_bytes())
                .map_err(classify)?;
            let mut table = tx.open_table(DOCS).map_err(classify)?;
            for entry in table.iter().map_err(classify)? {
                let (k, v) = entry.map_err(classify)?;
                if postcard::from_bytes::<DocRecord>(v.value())
                    .is_ok_and(|r| r.workspace == *ws.as_bytes())
                {
                    gone.insert(k.value());
                }
            }
            table.retain(|k, _| !gone.contains(&k)).map_err(classify)?;
            out.documents = gone.len();
            let mut changes = tx.open_table(CHANGES).map_err(classify)?;
            let mut snapshots = tx.open_table(SNAPSHOTS).map_err(classify)?;
            let mut facts = tx.open_table(FILE_FACTS).map_err(classify)?;
            let mut signatures = tx.open_table(SIGNATURES).map_err(classify)?;
            for doc in &gone {
                changes
                    .retain_in((*doc, 0)..=(*doc, u64::MAX), |_, _| false)
                    .map_err(classify)?;
                snapshots.remove(*doc).map_err(classify)?;
                facts.remove(*doc).map_err(classify)?;
                signatures
                    .retain_in((*doc, [0; 32])..=(*doc, [0xff; 32]), |_, _| false)
                    .map_err(classify)?;
            }
            tx.open_table(SYNC_STATES)
                .map_err(classify)?
                .retain(|(_, doc), _| !gone.contains(&doc))
                .map_err(classify)?;
            tx.open_table(AI_CACHE)
                .map_err(classify)?
                .retain(|_, _| false)
                .map_err(classify)?;
        }
        let links: Vec<String> = super::folders::links_of(&tx, &ws)?;
        out.folders = links.len();
        let unlinks: Vec<super::folders::FolderWrite> = links
            .into_iter()
            .map(super::folders::FolderWrite::Unlink)
            .collect();
        super::folders::commit(&tx, &unlinks)?;
        let (tip, redacted) =
            audit::redact_workspace(&tx, self.audit_tip, &ws).map_err(classify)?;
        out.audit_redacted = redacted;
        tx.commit().map_err(classify)?;
        self.audit_tip = tip;
        // Every document deleted, loaded or not: no stale record counter
        // survives for an id that has no records.
        for doc in &gone {
            self.counters.remove(&DocId::from_bytes(*doc));
        }
        out.compacted = match self.db.as_mut().map(Database::compact) {
            Some(Ok(_)) => true,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the store was not compacted after removing a workspace; its freed pages may still hold its bytes until the next compaction");
                false
            }
            None => false,
        };
        Ok(out)
    }
}

/// The change records of every document: what to key the next one with,
/// and which documents are due for compaction — kept as records are
/// written, so finding them costs nothing per unrelated document.
pub(super) struct RecordCounts {
    by_doc: HashMap<DocId, Counters>,
    /// Documents with at least `per_doc` records not folded yet.
    due: BTreeSet<DocId>,
    /// Records not folded yet, over all documents.
    pending: u64,
    per_doc: u64,
}

impl RecordCounts {
    pub(super) fn new(per_doc: u64) -> Self {
        Self {
            by_doc: HashMap::new(),
            due: BTreeSet::new(),
            pending: 0,
            per_doc: per_doc.max(1),
        }
    }

    pub(super) fn get(&self, doc: &DocId) -> Option<Counters> {
        self.by_doc.get(doc).copied()
    }

    pub(super) fn set(&mut self, doc: DocId, c: Counters) {
        self.remove(&doc);
        self.by_doc.insert(doc, c);
        self.pending += c.pending;
        if c.pending >= self.per_doc {
            self.due.insert(doc);
        }
    }

    fn bump(&mut self, doc: DocId, n: u64) {
        let c = self.by_doc.entry(doc).or_default();
        c.next += n;
        c.pending += n;
        self.pending += n;
        if c.pending >= self.per_doc {
            self.due.insert(doc);
        }
    }

    /// The document's records are folded into its snapshot.
    fn folded(&mut self, doc: &DocId) {
        if let Some(c) = self.by_doc.get_mut(doc) {
            self.pending -= c.pending;
            c.pending = 0;
        }
        self.due.remove(doc);
    }

    /// The document is gone with its records.
    pub(super) fn remove(&mut self, doc: &DocId) {
        if let Some(c) = self.by_doc.remove(doc) {
            self.pending -= c.pending;
        }
        self.due.remove(doc);
    }

    /// How soon compaction should run.
    pub(super) fn urgency(&self) -> Compaction {
        if self.pending >= self.per_doc.saturating_mul(OVERDUE_FACTOR) {
            Compaction::Overdue
        } else if !self.due.is_empty() || self.pending >= self.per_doc {
            Compaction::Due
        } else {
            Compaction::None
        }
    }

    /// The documents to compact: every one with records when `all`, or when
    /// the store holds as many unfolded records as one document may (many
    /// documents of a record or two each load slower than their snapshots,
    /// and no single one would ever reach the threshold); else those past
    /// the threshold.
    fn due(&self, all: bool) -> Vec<DocId> {
        if all || self.pending >= self.per_doc {
            let mut docs: Vec<DocId> = self
                .by_doc
                .iter()
                .filter(|(_, c)| c.pending > 0)
                .map(|(d, _)| *d)
                .collect();
            docs.sort();
            docs
        } else {
            self.due.iter().copied().collect()
        }
    }
}

/// Unfolded records, in thresholds, past which compaction runs even while
/// the store is busy (below it, it waits for a quiet moment).
const OVERDUE_FACTOR: u64 = 4;

/// Whether compaction has work, and whether it may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Compaction {
    /// Nothing is past its threshold.
    None,
    /// Documents are past their threshold: compact when the store is idle.
    Due,
    /// So many records wait that compaction runs now, busy or not.
    Overdue,
}

/// Per-document bookkeeping of change records.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counters {
    /// Key of the next change record.
    next: u64,
    /// Change records not yet folded into a snapshot.
    pending: u64,
}

/// A reply waiting for the commit that makes its write durable.
pub(super) type Deferred = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

/// A document a peer's checked chunk replaced, waiting for the next commit:
/// its saved form becomes its snapshot, in place of its records.
pub(super) struct StagedSnapshot {
    pub ws: WorkspaceId,
    pub doc: DocId,
    pub saved: Vec<u8>,
    pub signatures: Vec<SignedHead>,
}

/// Writes the author signatures of `doc`'s changes.
fn put_signatures(
    table: &mut redb::Table<'_, ([u8; 16], [u8; 32]), &[u8]>,
    doc: [u8; 16],
    signatures: &[SignedHead],
) -> Result<(), StoreError> {
    for sig in signatures {
        let bytes = postcard::to_stdvec(sig)?;
        table
            .insert((doc, sig.hash), bytes.as_slice())
            .map_err(classify)?;
    }
    Ok(())
}

/// The kind of `doc` in `ws`, from its id.
fn doc_kind(ws: &WorkspaceId, doc: &DocId) -> DocKind {
    if *doc == access_doc_id(ws) {
        DocKind::Access
    } else if *doc == index_doc_id(ws) {
        DocKind::Index
    } else {
        DocKind::File
    }
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
/// redb's page cache: enough for loading and committing, not a copy of the
/// store (the node's memory at 10,000 files is in `docs/benchmarks.md`).
const STORE_CACHE_BYTES: usize = 32 << 20;

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
    // The documents live in memory once loaded; redb's page cache (1 GiB by
    // default) would hold a second copy of what was written: keep it small.
    match std::panic::catch_unwind(|| {
        Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(path)
    }) {
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

/// A snapshot's bytes, its heads and the document's record counters.
type ParkedDoc = (Vec<u8>, Vec<automerge::ChangeHash>, Counters);

/// A document that is only a snapshot (no change records after it): its
/// saved bytes and heads, read without loading it.
fn parked_doc(
    snapshots: &redb::ReadOnlyTable<[u8; 16], (u64, &[u8])>,
    changes: &redb::ReadOnlyTable<([u8; 16], u64), &[u8]>,
    id: DocId,
) -> Result<Option<ParkedDoc>, LoadError> {
    let key = *id.as_bytes();
    let Some(v) = snapshots.get(key).map_err(redb::Error::from)? else {
        return Ok(None);
    };
    let mut records = changes
        .range((key, 0)..=(key, u64::MAX))
        .map_err(redb::Error::from)?;
    if records.next().is_some() {
        return Ok(None);
    }
    let (upto, data) = v.value();
    Ok(saved_heads(data).map(|heads| {
        let counters = Counters {
            next: upto + 1,
            pending: 0,
        };
        (data.to_vec(), heads, counters)
    }))
}

/// A document as stored: its snapshot (with the last counter folded in)
/// and its change records after it, not parsed yet.
pub(super) struct StoredDoc {
    id: DocId,
    snapshot: Option<(u64, Vec<u8>)>,
    changes: Vec<(u64, Vec<u8>)>,
}

/// Reads a document's stored bytes.
fn read_doc(
    snapshots: &redb::ReadOnlyTable<[u8; 16], (u64, &[u8])>,
    changes: &redb::ReadOnlyTable<([u8; 16], u64), &[u8]>,
    id: DocId,
) -> Result<StoredDoc, LoadError> {
    let key = *id.as_bytes();
    let snapshot = snapshots.get(key).map_err(redb::Error::from)?.map(|v| {
        let (upto, data) = v.value();
        (upto, data.to_vec())
    });
    let mut records = Vec::new();
    for entry in changes
        .range((key, 0)..=(key, u64::MAX))
        .map_err(redb::Error::from)?
    {
        let (k, v) = entry.map_err(redb::Error::from)?;
        records.push((k.value().1, v.value().to_vec()));
    }
    Ok(StoredDoc {
        id,
        snapshot,
        changes: records,
    })
}

/// A document rebuilt from its stored bytes, or why it could not be.
type Built = Result<(DocId, AutoCommit, Counters), LoadError>;

/// Builds the documents, in order, on as many threads as there are cores
/// (at most 8): at a restart before compaction has folded them, thousands
/// of documents are still change records, and Automerge rebuilds each in
/// about half a millisecond.
fn build_docs<K: Send>(stored: Vec<(K, StoredDoc)>) -> Vec<(K, Built)> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(8);
    if threads == 1 || stored.len() < 64 {
        return stored
            .into_iter()
            .map(|(k, d)| (k, guarded_build(d)))
            .collect();
    }
    let per = stored.len().div_ceil(threads);
    let mut parts: Vec<Vec<(K, StoredDoc)>> = Vec::with_capacity(threads);
    let mut rest = stored.into_iter();
    loop {
        let part: Vec<(K, StoredDoc)> = rest.by_ref().take(per).collect();
        if part.is_empty() {
            break;
        }
        parts.push(part);
    }
    std::thread::scope(|scope| {
        let workers: Vec<_> = parts
            .into_iter()
            .map(|part| {
                scope.spawn(move || {
                    part.into_iter()
                        .map(|(k, d)| (k, guarded_build(d)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            // Every build is guarded, so a worker cannot panic; if one did
            // (out of memory), the thread scope would panic the store's
            // open as a sequential load would have.
            .flat_map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// [`build_doc`], a panic anywhere in it (Automerge decoding crafted bytes)
/// an error naming the document.
fn guarded_build(stored: StoredDoc) -> Built {
    let id = stored.id;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| build_doc(stored))).unwrap_or_else(
        |_| {
            Err(LoadError::document(
                id,
                "it could not be rebuilt",
                "Automerge panicked",
            ))
        },
    )
}

/// Loads a document: its snapshot, then its change records in one batch.
fn build_doc(stored: StoredDoc) -> Built {
    let StoredDoc {
        id,
        snapshot,
        changes,
    } = stored;
    let (mut am, first) = match snapshot {
        Some((upto, data)) => {
            let am = std::panic::catch_unwind(|| AutoCommit::load(&data))
                .map_err(|_| {
                    LoadError::document(id, "its snapshot is unreadable", "Automerge panicked")
                })?
                .map_err(|e| LoadError::document(id, "its snapshot is unreadable", e))?;
            (am, upto + 1)
        }
        None => (AutoCommit::new(), 0),
    };
    let mut batch = Vec::with_capacity(changes.len());
    let mut next = first;
    for (counter, bytes) in changes {
        let change = Change::from_bytes(bytes)
            .map_err(|e| LoadError::document(id, "a change is unreadable", e))?;
        batch.push(change);
        next = counter + 1;
    }
    let pending = batch.len() as u64;
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        xencode_protocol::apply::apply_changes(&mut am, batch)
    }))
    .map_err(|_| LoadError::document(id, "its changes do not apply", "Automerge panicked"))?
    .map_err(|e| LoadError::document(id, "its changes do not apply", e))?;
    Ok((id, am, Counters { next, pending }))
}

/// Whether the database still accepts write transactions.
fn usable(db: &Database) -> bool {
    match db.begin_write() {
        Ok(tx) => tx.abort().is_ok(),
        Err(_) => false,
    }
}

/// Maps a redb failure to what the user is told.
pub(super) fn classify(e: impl Into<redb::Error>) -> StoreError {
    let e: redb::Error = e.into();
    match &e {
        redb::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => StoreError::DiskFull,
        _ => StoreError::Storage(std::sync::Arc::new(e)),
    }
}

/// Changes up to this size are stored as they are; larger ones compressed.
const STORED_RAW_UP_TO: usize = 4096;

/// The bytes a change record is stored as. Automerge compresses (deflate)
/// every change over 256 bytes, and setting up the compressor costs more
/// than a small change is worth (a profile of a burst of 1,000 new files put
/// 8% of the node's time in `zlib_rs::deflate::init` and its page faults);
/// changes received from peers are stored as they came, uncompressed,
/// already. Loading reads either form, and compaction folds both into a
/// compressed snapshot.
fn stored_form(change: &mut automerge::Change) -> std::borrow::Cow<'_, [u8]> {
    if change.raw_bytes().len() <= STORED_RAW_UP_TO {
        std::borrow::Cow::Borrowed(change.raw_bytes())
    } else {
        change.bytes()
    }
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT};

    use super::{STORED_RAW_UP_TO, stored_form};

    /// The last change of a document holding `n` characters of text.
    fn change_of(n: usize) -> automerge::Change {
        let mut am = AutoCommit::new();
        let text = am.put_object(ROOT, "text", ObjType::Text).expect("text");
        am.splice_text(&text, 0, 0, &"a line of text\n".repeat(n / 15 + 1))
            .expect("splice");
        am.get_last_local_change().expect("a change")
    }

    #[test]
    fn small_changes_are_stored_as_they_are_large_ones_compressed_and_both_load() {
        let mut small = change_of(100);
        assert!(small.raw_bytes().len() <= STORED_RAW_UP_TO);
        let stored = stored_form(&mut small).into_owned();
        assert_eq!(
            stored,
            small.raw_bytes(),
            "no compressor for a small change"
        );
        let back = automerge::Change::from_bytes(stored).expect("loads");
        assert_eq!(back.hash(), small.hash());

        let mut large = change_of(100_000);
        let raw_len = large.raw_bytes().len();
        assert!(raw_len > STORED_RAW_UP_TO);
        let stored = stored_form(&mut large).into_owned();
        assert!(
            stored.len() < raw_len / 2,
            "compressed: {} of {raw_len}",
            stored.len()
        );
        let back = automerge::Change::from_bytes(stored).expect("loads");
        assert_eq!(back.hash(), large.hash());
    }
}
