//! What a linked folder does to a workspace (ARCHITECTURE section 11): a
//! file saved on disk merged in against the content last synced, a file
//! deleted or renamed on disk, a file's permission bits, and the state the
//! folder writer needs to put a file on disk.

use automerge::transaction::Transactable;
use automerge::{ChangeHash, ROOT, ReadDoc};
use serde::{Deserialize, Serialize};
use xencode_protocol::api::FileKind;
use xencode_protocol::{DocId, WorkspacePath};

use super::merge;
use super::{
    Author, NewChange, Workspace, WorkspaceError, damaged, get_text_obj, get_u64, stamp,
    write_content,
};

/// What a folder last synced of a file: the document and heads its content
/// came from. The base of the next three-way merge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncBase {
    pub doc: DocId,
    pub heads: Vec<[u8; 32]>,
}

/// A file as the workspace holds it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileState {
    pub path: WorkspacePath,
    pub doc: DocId,
    pub heads: Vec<ChangeHash>,
    pub kind: FileKind,
    pub bytes: Vec<u8>,
    /// Permission bits, if the file was ever written from a folder.
    pub mode: Option<u32>,
}

impl SyncBase {
    /// Whether this base is document `doc` at exactly `heads` (in any order).
    pub fn is_at(&self, doc: DocId, heads: &[[u8; 32]]) -> bool {
        let mut now = heads.to_vec();
        let mut then = self.heads.clone();
        now.sort_unstable();
        then.sort_unstable();
        self.doc == doc && now == then
    }
}

impl FileState {
    /// The base a folder records after syncing this state.
    pub fn base(&self) -> SyncBase {
        SyncBase {
            doc: self.doc,
            heads: self.heads.iter().map(|h| h.0).collect(),
        }
    }
}

/// Where a file of the workspace stands relative to a folder's base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeads {
    pub path: WorkspacePath,
    pub doc: DocId,
    pub heads: Vec<[u8; 32]>,
}

impl Workspace {
    /// The file at `path` as it stands, if the workspace has it.
    pub fn file_state(&mut self, path: &WorkspacePath) -> Option<FileState> {
        let id = self.file_doc(path)?;
        let content = self.get_file(path).ok()?;
        let doc = self.files.get_mut(&id)?;
        let mode = get_u64(&doc.am, &ROOT, "mode").and_then(|m| u32::try_from(m).ok());
        Some(FileState {
            path: path.clone(),
            doc: id,
            heads: doc.heads(),
            kind: content.kind,
            bytes: content.bytes,
            mode,
        })
    }

    /// Document and heads of every file whose path is `prefix` or under
    /// `prefix/` (every file if `prefix` is `None`): O(log files + found).
    pub fn file_heads(&mut self, prefix: Option<&str>) -> Vec<FileHeads> {
        let index = self.file_index();
        let chosen: Vec<(WorkspacePath, DocId)> = match prefix {
            None => index.by_path.iter().map(|(p, d)| (p.clone(), *d)).collect(),
            // Paths sort as strings: everything under `prefix/` follows
            // `prefix` among the paths that start with it.
            Some(prefix) => match WorkspacePath::parse(prefix) {
                Ok(start) => index
                    .by_path
                    .range(start..)
                    .take_while(|(p, _)| p.as_str().starts_with(prefix))
                    .filter(|(p, _)| {
                        p.as_str()[prefix.len()..].is_empty()
                            || p.as_str()[prefix.len()..].starts_with('/')
                    })
                    .map(|(p, d)| (p.clone(), *d))
                    .collect(),
                Err(_) => Vec::new(),
            },
        };
        chosen
            .into_iter()
            .filter_map(|(path, doc)| {
                let heads = self.files.get_mut(&doc)?.heads();
                Some(FileHeads {
                    path,
                    doc,
                    heads: heads.into_iter().map(|h| h.0).collect(),
                })
            })
            .collect()
    }

    /// Takes in what a folder holds at `path`: a new file is added; a text
    /// file becomes the character edits that turn the synced base into
    /// `bytes`, carried over any edits the workspace got since that base (a
    /// three-way merge: neither side is lost); anything else replaces the
    /// content. `mode` (permission bits) is recorded when it changed.
    #[allow(clippy::too_many_arguments)]
    pub fn ingest(
        &mut self,
        path: &WorkspacePath,
        bytes: &[u8],
        mode: Option<u32>,
        base: Option<&SyncBase>,
        author: &Author,
        now_ms: u64,
        new_doc_nonce: [u8; 16],
        max_text_bytes: usize,
    ) -> Result<Vec<NewChange>, WorkspaceError> {
        let mut changes = Vec::new();
        let cites = self.access.am.get_heads();
        let doc_id = self.file_doc_or_new(path, author, now_ms, new_doc_nonce, &mut changes)?;
        let doc = self
            .files
            .get_mut(&doc_id)
            .ok_or_else(|| WorkspaceError::Damaged("file document vanished".into()))?;
        let as_text = (bytes.len() <= max_text_bytes)
            .then(|| std::str::from_utf8(bytes).ok())
            .flatten();
        let changed = match (get_text_obj(&doc.am), as_text) {
            (Some(text), Some(new)) => {
                let current = doc.am.text(&text).map_err(damaged)?;
                let known = base.filter(|b| b.doc == doc_id).and_then(|b| {
                    let heads: Vec<ChangeHash> = b.heads.iter().map(|h| ChangeHash(*h)).collect();
                    let all_here = heads.iter().all(|h| doc.am.get_change_by_hash(h).is_some());
                    all_here
                        .then(|| doc.am.text_at(&text, &heads).ok())
                        .flatten()
                });
                let splices = match known {
                    Some(base_text) if base_text != current => {
                        merge::rebase(&base_text, &merge::edits(&base_text, new), &current)
                    }
                    _ => merge::splices(&current, new),
                };
                for s in &splices {
                    // Bounded by the text's length: they fit usize and isize.
                    if let Err(e) =
                        doc.am
                            .splice_text(&text, s.pos as usize, s.delete as isize, &s.insert)
                    {
                        doc.am.rollback();
                        return Err(damaged(e));
                    }
                }
                !splices.is_empty()
            }
            _ => write_content(&mut doc.am, bytes, max_text_bytes).map_err(damaged)?,
        };
        let mode_changed = match mode {
            Some(m) if get_u64(&doc.am, &ROOT, "mode") != Some(u64::from(m)) => {
                doc.am.put(ROOT, "mode", u64::from(m)).map_err(damaged)?;
                true
            }
            _ => false,
        };
        if changed || mode_changed {
            stamp(&mut doc.am, author, now_ms).map_err(damaged)?;
            changes.extend(doc.commit(now_ms, &cites));
        }
        Ok(changes)
    }

    /// Removes `path` because it was deleted on disk, unless the workspace
    /// changed it since `base` (then the teammate's edit wins over the
    /// deletion, and the folder gets the file back). Returns `None` if kept.
    pub fn remove_if_unchanged(
        &mut self,
        path: &WorkspacePath,
        base: &SyncBase,
        now_ms: u64,
    ) -> Result<Option<Vec<NewChange>>, WorkspaceError> {
        let Some(id) = self.file_doc(path) else {
            return Ok(Some(Vec::new()));
        };
        let unchanged = self.files.get_mut(&id).is_some_and(|d| {
            let now: Vec<[u8; 32]> = d.heads().into_iter().map(|h| h.0).collect();
            base.is_at(id, &now)
        });
        if !unchanged {
            return Ok(None);
        }
        self.remove_file(path, now_ms).map(Some)
    }

    /// Renames a file: the index names its document under `to` instead of
    /// `from`, so its history goes with it. A file at `to` is replaced.
    pub fn rename_file(
        &mut self,
        from: &WorkspacePath,
        to: &WorkspacePath,
        author: &Author,
        now_ms: u64,
    ) -> Result<Vec<NewChange>, WorkspaceError> {
        let doc = self
            .file_doc(from)
            .ok_or_else(|| WorkspaceError::FileNotFound(from.clone()))?;
        let cites = self.access.am.get_heads();
        let files = get_files(&self.index.am)?;
        self.index
            .am
            .delete(&files, from.as_str())
            .map_err(damaged)?;
        if let Err(e) = self.enter_file(to, doc, author, now_ms) {
            self.index.am.rollback();
            return Err(e);
        }
        let changes = self.index.commit(now_ms, &cites).into_iter().collect();
        self.note_file(from, None);
        self.note_file(to, Some(doc));
        Ok(changes)
    }
}

fn get_files(am: &automerge::AutoCommit) -> Result<automerge::ObjId, WorkspaceError> {
    super::get_obj(am, &ROOT, "files")
        .ok_or_else(|| WorkspaceError::Damaged("index has no files map".into()))
}
