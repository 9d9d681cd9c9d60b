//! The Automerge schema of a workspace, and the edits the node makes to it.
//!
//! A workspace is a set of Automerge documents (ARCHITECTURE section 3):
//! - the access document: `{name, created_at, root_key, members: {peer:
//!   {role, added_by, added_at}}, revoked: {}}`;
//! - the index document: `{files: {path: {doc, created_by, created_at}},
//!   documents: {}, analyses: {}}`;
//! - one document per file: `{text: Text}` for UTF-8 files or `{data: Bytes}`
//!   otherwise, plus `updated_by` and `updated_at`.
//!
//! Every operation here validates first and mutates after, so a refused
//! request leaves no half-made change behind; each touched document gets one
//! commit, returned to the caller as a [`NewChange`] to persist. Nothing here
//! does I/O.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{
    ActorId, AutoCommit, Change, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value,
};
use xencode_protocol::api::{
    FileInfo, FileKind, Member, Role, Standing, WorkspaceDetail, WorkspaceSummary,
};
use xencode_protocol::policy::schema;
use xencode_protocol::{DocId, WorkspaceId, WorkspacePath};

use parking::{Facts, FileDocs};

/// Who makes local changes: the node's peer id and Automerge actor.
#[derive(Debug, Clone)]
pub struct Author {
    pub peer_id: String,
    pub public_key: [u8; 32],
    pub actor: ActorId,
}

/// A change made locally that must be persisted before it is acknowledged.
#[derive(Debug, Clone)]
pub struct NewChange {
    pub doc: DocId,
    pub change: Change,
}

/// Errors of workspace operations (all are the caller's mistakes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkspaceError {
    #[error("no file {0} in this workspace")]
    FileNotFound(WorkspacePath),
    #[error(
        "{0} is stored whole (binary, or text larger than store.max_text_bytes); only text files take character edits"
    )]
    NotText(WorkspacePath),
    #[error(
        "edit {edit} is out of range: pos {pos} + delete {delete} exceeds the text's {len} characters"
    )]
    OutOfRange {
        edit: usize,
        pos: u64,
        delete: u64,
        len: u64,
    },
    #[error(
        "{0}: the version the edit was made at is not in this file's history (the file was replaced, or the heads are not this file's); fetch it again"
    )]
    UnknownBase(WorkspacePath),
    #[error("{0} already exists in this workspace; import to another path, or remove it first")]
    FileExists(WorkspacePath),
    #[error("the workspace document is damaged: {0}")]
    Damaged(String),
}

/// The role of a document inside its workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DocKind {
    Access,
    Index,
    File,
}

/// One Automerge document.
#[derive(Debug, Clone)]
pub struct Doc {
    pub id: DocId,
    pub am: AutoCommit,
}

impl Doc {
    /// A new empty document written by `actor`.
    pub fn new(id: DocId, actor: &ActorId) -> Self {
        let mut am = AutoCommit::new();
        am.set_actor(actor.clone());
        Self { id, am }
    }

    /// Commits pending operations; returns the change to persist, if any.
    /// `cites` are the access-document heads the author sees (see
    /// [`xencode_protocol::envelope::encode_citation`]); empty for changes to
    /// the access document itself, which are judged by their own history.
    fn commit(&mut self, now_ms: u64, cites: &[ChangeHash]) -> Option<NewChange> {
        let secs = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        self.commit_noted(secs, cites, None)
    }

    /// [`Self::commit`] at `secs`, with `note` as a second line of the
    /// message (after the citation, which names the first line only).
    fn commit_noted(
        &mut self,
        secs: i64,
        cites: &[ChangeHash],
        note: Option<&str>,
    ) -> Option<NewChange> {
        let mut options = CommitOptions::default().with_time(secs);
        if !cites.is_empty() {
            let mut message = xencode_protocol::envelope::encode_citation(cites);
            if let Some(note) = note {
                message.push('\n');
                message.push_str(note);
            }
            options = options.with_message(message);
        }
        self.am.commit_with(options)?;
        self.am.get_last_local_change().map(|change| NewChange {
            doc: self.id,
            change,
        })
    }

    /// Heads as hex strings.
    pub fn heads(&mut self) -> Vec<ChangeHash> {
        self.am.get_heads()
    }
}

/// The deterministic id of a workspace's access document.
pub fn access_doc_id(ws: &WorkspaceId) -> DocId {
    DocId::derive(ws, b"access-document\0")
}

/// The deterministic id of a workspace's index document.
pub fn index_doc_id(ws: &WorkspaceId) -> DocId {
    DocId::derive(ws, b"index-document\0\0")
}

/// A loaded workspace.
#[derive(Debug, Clone)]
pub struct Workspace {
    pub id: WorkspaceId,
    pub access: Doc,
    pub index: Doc,
    /// Within a memory budget: the least recently used are parked
    /// (`parking.rs`).
    pub files: FileDocs,
    /// The index's file map by path and by document, valid for the index
    /// heads it was read at: reading it from Automerge costs O(files), and
    /// it is needed for every change event and every sync step.
    file_index: RefCell<Option<Arc<FileIndex>>>,
    /// New files' index entries wait for [`Workspace::end_index_batch`]: a
    /// burst of new files makes one index change, not one each.
    index_batch: bool,
}

/// The index document's `files` map, read once per index state.
#[derive(Debug, Default, Clone)]
pub struct FileIndex {
    heads: Vec<ChangeHash>,
    pub by_path: BTreeMap<WorkspacePath, DocId>,
    pub by_doc: HashMap<DocId, WorkspacePath>,
}

impl FileIndex {
    fn insert(&mut self, path: WorkspacePath, doc: DocId) {
        if let Some(old) = self.by_path.insert(path.clone(), doc) {
            self.by_doc.remove(&old);
        }
        self.by_doc.insert(doc, path);
    }

    fn remove(&mut self, path: &WorkspacePath) {
        if let Some(doc) = self.by_path.remove(path) {
            self.by_doc.remove(&doc);
        }
    }
}

/// The content of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileContent {
    pub kind: FileKind,
    pub bytes: Vec<u8>,
}

impl Workspace {
    /// Creates a workspace whose creator (and first admin) is `author`.
    /// Returns it with the changes to persist.
    pub fn create(
        id: WorkspaceId,
        nonce: &[u8; 16],
        name: &str,
        author: &Author,
        now_ms: u64,
    ) -> Result<(Self, Vec<NewChange>), WorkspaceError> {
        let mut access = Doc::new(access_doc_id(&id), &author.actor);
        let mut index = Doc::new(index_doc_id(&id), &author.actor);
        let creator = schema::Creator {
            peer: &author.peer_id,
            root_key: &author.public_key,
        };
        schema::genesis(&mut access.am, name, creator, nonce, now_ms).map_err(damaged)?;
        for key in ["files", "documents", "analyses"] {
            index
                .am
                .put_object(ROOT, key, ObjType::Map)
                .map_err(damaged)?;
        }
        let access_change = access.commit(now_ms, &[]);
        let cites = access.am.get_heads();
        let changes = [access_change, index.commit(now_ms, &cites)]
            .into_iter()
            .flatten()
            .collect();
        Ok((
            Self {
                id,
                access,
                index,
                files: FileDocs::default(),
                file_index: RefCell::default(),
                index_batch: false,
            },
            changes,
        ))
    }

    /// Every document of the workspace, mutably, all loaded (for tests and
    /// the fuzz harness: a node never needs them all at once).
    pub fn docs_mut(&mut self) -> impl Iterator<Item = &mut Doc> {
        [&mut self.access, &mut self.index]
            .into_iter()
            .chain(self.files.all_mut())
    }

    /// Every document's id with its heads, without loading parked ones.
    pub fn all_heads(&mut self) -> Vec<(DocId, Vec<ChangeHash>)> {
        let mut out = vec![
            (self.access.id, self.access.heads()),
            (self.index.id, self.index.heads()),
        ];
        let ids: Vec<DocId> = self.files.keys().copied().collect();
        for id in ids {
            if let Some(heads) = self.files.heads(&id) {
                out.push((id, heads));
            }
        }
        out
    }

    /// A snapshot of one of the workspace's documents that loads back:
    /// `None` if the document is not the workspace's, `Some(None)` if its
    /// saved form does not load back.
    pub fn snapshot(&mut self, id: &DocId) -> Option<Option<Vec<u8>>> {
        if self.files.contains_key(id) {
            return self.files.snapshot(id);
        }
        self.doc_mut(id)
            .map(|d| parking::verified_snapshot(&mut d.am))
    }

    /// One document of the workspace, by id, in O(log files).
    pub fn doc_mut(&mut self, id: &DocId) -> Option<&mut Doc> {
        if *id == self.access.id {
            Some(&mut self.access)
        } else if *id == self.index.id {
            Some(&mut self.index)
        } else {
            self.files.get_mut(id)
        }
    }

    /// The workspace's name.
    pub fn name(&self) -> String {
        get_str(&self.access.am, &ROOT, "name").unwrap_or_default()
    }

    /// Summary as seen by the node whose peer id is `me`, at `now_ms`.
    pub fn summary(&self, me: &str, now_ms: u64) -> WorkspaceSummary {
        let members = self.members();
        let mine = members.iter().find(|m| m.peer_id == me);
        let effective_role = self.effective_role(me, now_ms);
        let standing = match mine {
            None => Standing::NotMember,
            Some(m) if m.revoked => Standing::Revoked,
            Some(_) if effective_role.is_none() => Standing::Expired,
            Some(_) => Standing::Member,
        };
        WorkspaceSummary {
            standing,
            effective_role,
            id: self.id,
            name: self.name(),
            created_at: get_u64(&self.access.am, &ROOT, "created_at").unwrap_or(0),
            owner: get_str(&self.access.am, &ROOT, "owner").unwrap_or_default(),
            role: members
                .iter()
                .find(|m| m.peer_id == me)
                .map_or(Role::Viewer, |m| m.role),
            files: self.file_index().by_path.len(),
        }
    }

    /// Full detail, including the heads of every document.
    pub fn detail(&mut self, me: &str, now_ms: u64) -> WorkspaceDetail {
        let summary = self.summary(me, now_ms);
        let members = self.members();
        let mut heads: Vec<String> = self
            .all_heads()
            .into_iter()
            .flat_map(|(_, h)| h)
            .map(|h| h.to_string())
            .collect();
        heads.sort();
        WorkspaceDetail {
            summary,
            members,
            heads,
            documents: 2 + self.files.len(),
        }
    }

    /// Members from the access document, sorted by peer id.
    pub fn members(&self) -> Vec<Member> {
        let am = &self.access.am;
        let Some(members) = get_obj(am, &ROOT, "members") else {
            return Vec::new();
        };
        am.keys(&members)
            .filter_map(|peer| {
                let m = get_obj(am, &members, &peer)?;
                let revoked = !self.is_root(&peer)
                    && get_obj(am, &ROOT, "revoked")
                        .and_then(|r| get_obj(am, &r, &peer))
                        .is_some();
                Some(Member {
                    name: self.access_doc().member_name(&peer),
                    expires_at: self.member_expiry(&peer),
                    role: Role::parse(&get_str(am, &m, "role")?)?,
                    added_by: get_str(am, &m, "added_by").unwrap_or_default(),
                    added_at: get_u64(am, &m, "added_at").unwrap_or(0),
                    peer_id: peer,
                    revoked,
                })
            })
            .collect()
    }

    /// The index's files, read again from Automerge only when the index
    /// moved in a way [`Self::note_file`] did not record.
    pub fn file_index(&self) -> Arc<FileIndex> {
        let heads = self.index.am.base_heads();
        if let Some(cached) = self.file_index.borrow().as_ref()
            && cached.heads == heads
        {
            return Arc::clone(cached);
        }
        let am = &self.index.am;
        let mut index = FileIndex {
            heads,
            ..FileIndex::default()
        };
        if let Some(files) = get_obj(am, &ROOT, "files") {
            for key in am.keys(&files) {
                let Ok(path) = WorkspacePath::parse(&key) else {
                    continue;
                };
                let doc = get_obj(am, &files, &key)
                    .and_then(|entry| get_str(am, &entry, "doc"))
                    .and_then(|d| d.parse().ok());
                if let Some(doc) = doc {
                    index.insert(path, doc);
                }
            }
        }
        let index = Arc::new(index);
        *self.file_index.borrow_mut() = Some(Arc::clone(&index));
        index
    }

    /// Records a local change to the index's files map in the cached file
    /// index (O(log files)), so that it stays valid at the new heads.
    fn note_file(&mut self, path: &WorkspacePath, doc: Option<DocId>) {
        // Not `get_heads`: it would commit a batch's entries, uncited.
        let heads = self.index.am.base_heads();
        let mut slot = self.file_index.borrow_mut();
        let Some(cached) = slot.as_mut() else {
            return;
        };
        let index = Arc::make_mut(cached);
        match doc {
            Some(doc) => index.insert(path.clone(), doc),
            None => index.remove(path),
        }
        index.heads = heads;
    }

    /// Documents of the files in the index.
    pub fn file_doc_ids(&self) -> Vec<DocId> {
        self.file_index().by_path.values().copied().collect()
    }

    /// Whether the index names this document as a file's.
    pub fn is_file_doc(&self, doc: &DocId) -> bool {
        self.file_index().by_doc.contains_key(doc)
    }

    /// The path of the file whose content a document holds.
    pub fn path_of_doc(&self, doc: &DocId) -> Option<String> {
        self.file_index()
            .by_doc
            .get(doc)
            .map(|p| p.as_str().to_owned())
    }

    /// An empty workspace shell (joined, documents not synced yet).
    pub fn empty(id: WorkspaceId, author: &Author) -> Self {
        Self {
            id,
            access: Doc::new(access_doc_id(&id), &author.actor),
            index: Doc::new(index_doc_id(&id), &author.actor),
            files: FileDocs::default(),
            file_index: RefCell::default(),
            index_batch: false,
        }
    }

    fn file_doc(&self, path: &WorkspacePath) -> Option<DocId> {
        self.file_index().by_path.get(path).copied()
    }

    /// Information on every file, sorted by path (parked documents are
    /// not loaded, except once for those parked at start).
    pub fn list_files(&mut self) -> Vec<FileInfo> {
        let index = self.file_index();
        index
            .by_path
            .iter()
            .filter_map(|(path, doc)| Some(file_info(path.clone(), self.files.facts(doc)?)))
            .collect()
    }

    /// Whether the workspace has a file at `path`, without loading its
    /// document.
    pub fn has_file(&self, path: &WorkspacePath) -> bool {
        self.file_doc(path)
            .is_some_and(|id| self.files.contains_key(&id))
    }

    /// The content of a file.
    pub fn get_file(&mut self, path: &WorkspacePath) -> Result<FileContent, WorkspaceError> {
        let doc = self.existing_file(path)?;
        let am = &doc.am;
        if let Some(text) = get_text_obj(am) {
            let s = am.text(&text).map_err(damaged)?;
            return Ok(FileContent {
                kind: FileKind::Text,
                bytes: s.into_bytes(),
            });
        }
        Ok(FileContent {
            kind: FileKind::Binary,
            bytes: get_bytes(am, &ROOT, "data").unwrap_or_default(),
        })
    }

    fn existing_file(&mut self, path: &WorkspacePath) -> Result<&mut Doc, WorkspaceError> {
        self.file_doc(path)
            .and_then(|id| self.files.get_mut(&id))
            .ok_or_else(|| WorkspaceError::FileNotFound(path.clone()))
    }

    /// Creates or replaces a file. A text file that already exists is changed
    /// by one splice over the region that differs, so concurrent edits
    /// elsewhere in the file merge. Unchanged content makes no change.
    /// `new_doc_nonce` names the file's document if the file is new. UTF-8
    /// content of at most `max_text_bytes` becomes Automerge Text; anything
    /// else is stored whole.
    pub fn put_file(
        &mut self,
        path: &WorkspacePath,
        bytes: &[u8],
        author: &Author,
        now_ms: u64,
        new_doc_nonce: [u8; 16],
        max_text_bytes: usize,
    ) -> Result<(FileInfo, Vec<NewChange>), WorkspaceError> {
        let changes = self.ingest(
            path,
            bytes,
            None,
            None,
            author,
            now_ms,
            new_doc_nonce,
            max_text_bytes,
        )?;
        let doc = self
            .existing_file(path)
            .map_err(|_| WorkspaceError::Damaged("file document vanished".into()))?;
        Ok((file_info(path.clone(), parking::facts_of(&doc.am)), changes))
    }

    /// The document of `path`, or a new one entered in the index (its
    /// change appended to `changes`).
    fn file_doc_or_new(
        &mut self,
        path: &WorkspacePath,
        author: &Author,
        now_ms: u64,
        new_doc_nonce: [u8; 16],
        changes: &mut Vec<NewChange>,
    ) -> Result<DocId, WorkspaceError> {
        if let Some(id) = self.file_doc(path)
            && self.files.contains_key(&id)
        {
            return Ok(id);
        }
        let id = DocId::derive(&self.id, &new_doc_nonce);
        self.enter_file(path, id, author, now_ms)?;
        if !self.index_batch {
            let cites = self.access.am.get_heads();
            changes.extend(self.index.commit(now_ms, &cites));
        }
        self.note_file(path, Some(id));
        self.files.insert(Doc::new(id, &author.actor));
        Ok(id)
    }

    /// From now until [`Self::end_index_batch`], new files' index entries
    /// are kept uncommitted.
    pub fn begin_index_batch(&mut self) {
        self.index_batch = true;
    }

    /// Commits the index entries of the new files since
    /// [`Self::begin_index_batch`] as one change, and ends the batch.
    pub fn end_index_batch(&mut self, now_ms: u64) -> Option<NewChange> {
        self.index_batch = false;
        self.commit_index_batch(now_ms)
    }

    /// Commits the batch's entries so far as one change; the batch goes on.
    pub fn commit_index_batch(&mut self, now_ms: u64) -> Option<NewChange> {
        let cites = self.access.am.get_heads();
        let change = self.index.commit(now_ms, &cites)?;
        let heads = self.index.am.base_heads();
        if let Some(cached) = self.file_index.borrow_mut().as_mut() {
            Arc::make_mut(cached).heads = heads;
        }
        Some(change)
    }

    /// Writes the index entry naming `doc` as `path`'s (uncommitted).
    fn enter_file(
        &mut self,
        path: &WorkspacePath,
        doc: DocId,
        author: &Author,
        now_ms: u64,
    ) -> Result<(), WorkspaceError> {
        let am = &mut self.index.am;
        let files = get_obj(am, &ROOT, "files")
            .ok_or_else(|| WorkspaceError::Damaged("index has no files map".into()))?;
        let entry = am
            .put_object(&files, path.as_str(), ObjType::Map)
            .map_err(damaged)?;
        am.put(&entry, "doc", doc.to_string()).map_err(damaged)?;
        am.put(&entry, "created_by", author.peer_id.as_str())
            .map_err(damaged)?;
        am.put(&entry, "created_at", now_ms).map_err(damaged)?;
        Ok(())
    }

    /// Removes a file from the index. Its document and history stay in the
    /// store.
    pub fn remove_file(
        &mut self,
        path: &WorkspacePath,
        now_ms: u64,
    ) -> Result<Vec<NewChange>, WorkspaceError> {
        if !self.has_file(path) {
            return Err(WorkspaceError::FileNotFound(path.clone()));
        }
        let am = &mut self.index.am;
        let files = get_obj(am, &ROOT, "files")
            .ok_or_else(|| WorkspaceError::Damaged("index has no files map".into()))?;
        am.delete(&files, path.as_str()).map_err(damaged)?;
        let cites = self.access.am.get_heads();
        let changes = self.index.commit(now_ms, &cites).into_iter().collect();
        self.note_file(path, None);
        Ok(changes)
    }
}

/// Writes `bytes` as the file's content; returns whether anything changed.
fn write_content(
    am: &mut AutoCommit,
    bytes: &[u8],
    max_text_bytes: usize,
) -> Result<bool, automerge::AutomergeError> {
    let as_text = if bytes.len() <= max_text_bytes {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    };
    match as_text {
        Some(new) => {
            let text = match get_text_obj(am) {
                Some(t) => t,
                None => am.put_object(ROOT, "text", ObjType::Text)?,
            };
            if get_bytes(am, &ROOT, "data").is_some() {
                am.delete(ROOT, "data")?;
            }
            let old = am.text(&text)?;
            if old == new {
                return Ok(am.pending_ops() > 0);
            }
            // The smallest character edits, so that concurrent edits
            // elsewhere in the file merge.
            for s in merge::splices(&old, new) {
                // Bounded by the text's length: they fit usize and isize.
                am.splice_text(&text, s.pos as usize, s.delete as isize, &s.insert)?;
            }
            Ok(true)
        }
        None => {
            if get_bytes(am, &ROOT, "data").as_deref() == Some(bytes) && get_text_obj(am).is_none()
            {
                return Ok(false);
            }
            if get_text_obj(am).is_some() {
                am.delete(ROOT, "text")?;
            }
            am.put(ROOT, "data", ScalarValue::Bytes(bytes.to_vec()))?;
            Ok(true)
        }
    }
}

pub(crate) fn stamp(
    am: &mut AutoCommit,
    author: &Author,
    now_ms: u64,
) -> Result<(), automerge::AutomergeError> {
    am.put(ROOT, "updated_by", author.peer_id.as_str())?;
    am.put(ROOT, "updated_at", now_ms)?;
    Ok(())
}

fn file_info(path: WorkspacePath, facts: Facts) -> FileInfo {
    FileInfo {
        path,
        kind: facts.kind,
        size_bytes: facts.size_bytes,
        chars: facts.chars,
        updated_by: facts.updated_by,
        updated_at: facts.updated_at,
    }
}

pub(crate) fn damaged(e: impl std::fmt::Display) -> WorkspaceError {
    WorkspaceError::Damaged(e.to_string())
}

fn get_text_obj(am: &AutoCommit) -> Option<ObjId> {
    match am.get(ROOT, "text") {
        Ok(Some((Value::Object(ObjType::Text), id))) => Some(id),
        _ => None,
    }
}

pub(crate) fn get_obj(am: &AutoCommit, obj: &ObjId, key: &str) -> Option<ObjId> {
    match am.get(obj, key) {
        Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
        _ => None,
    }
}

pub(crate) fn get_str(am: &AutoCommit, obj: &ObjId, key: &str) -> Option<String> {
    match am.get(obj, key) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

pub(crate) fn get_u64(am: &AutoCommit, obj: &ObjId, key: &str) -> Option<u64> {
    match am.get(obj, key) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Uint(n) => Some(*n),
            ScalarValue::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        },
        _ => None,
    }
}

fn get_bytes(am: &AutoCommit, obj: &ObjId, key: &str) -> Option<Vec<u8>> {
    match am.get(obj, key) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Bytes(b) => Some(b.clone()),
            _ => None,
        },
        _ => None,
    }
}

mod access;
mod analyses;
mod editing;
pub mod folder;
pub mod interop;
pub mod merge;
pub mod parking;
pub use access::MemberState;
pub use editing::Edited;

#[cfg(test)]
pub(crate) mod tests;
