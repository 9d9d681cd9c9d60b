//! Linked folders in the store (ARCHITECTURE section 11): which directory
//! is which workspace (`folders-1`), and per file what was last synced
//! between disk and workspace (`folder-files-1`). Changes made from a folder
//! and the records saying they were made commit in one transaction, so a
//! crash never leaves a merged edit that the folder would merge again.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use xencode_protocol::capability::Right;
use xencode_protocol::{WorkspaceId, WorkspacePath};

use super::actor::{Actor, random_nonce};
use super::persist::classify;
use super::tables::{FOLDER_FILES, FOLDERS};
use super::{Store, StoreError};
use crate::workspace::FileIndex;
use crate::workspace::folder::{FileHeads, FileState, SyncBase};

/// A directory bound to a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderLink {
    /// Absolute, canonical path of the directory.
    pub dir: String,
    pub workspace: WorkspaceId,
    pub linked_at: u64,
}

/// What a file on disk looked like when last synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
    pub mode: u32,
    /// blake3 of the bytes.
    pub hash: [u8; 32],
}

impl DiskStamp {
    /// Whether `other` (from a fresh `stat`) shows the same file unchanged,
    /// without reading it (size, mtime, inode and mode all equal).
    pub fn same_stat(&self, other: &DiskStamp) -> bool {
        self.size == other.size
            && self.mtime_ns == other.mtime_ns
            && self.ino == other.ino
            && self.mode == other.mode
    }
}

/// Per file of a folder: the workspace state last synced, and the disk
/// state it was synced with. `disk.hash != content_hash` means the disk
/// still has to get the workspace's content (a merge wrote more than the
/// disk held).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub base: SyncBase,
    pub content_hash: [u8; 32],
    pub disk: Option<DiskStamp>,
}

/// A change seen on disk, to take into the workspace.
#[derive(Debug, Clone)]
pub enum DiskOp {
    /// The file at `path` holds `bytes` (new or changed).
    Write {
        path: WorkspacePath,
        bytes: Vec<u8>,
        stamp: DiskStamp,
        base: Option<SyncBase>,
    },
    /// The file was deleted.
    Remove { path: WorkspacePath, base: SyncBase },
    /// The file moved (same content, found under a new path).
    Rename {
        from: WorkspacePath,
        to: WorkspacePath,
        stamp: DiskStamp,
        base: SyncBase,
    },
}

/// The outcome of one [`DiskOp`]: the workspace's state of each path it
/// touched (`None`: not in the workspace), or why it was refused.
pub type Ingested = Vec<(WorkspacePath, Result<Option<FileState>, String>)>;

/// A folder write waiting for the next commit.
#[derive(Debug, Clone)]
pub(super) enum FolderWrite {
    Link(FolderLink),
    Unlink(String),
    Record {
        dir: String,
        path: String,
        record: Option<FileRecord>,
    },
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// Folder requests to the store actor.
#[derive(Debug)]
pub(crate) enum FolderCommand {
    Links {
        reply: Reply<Vec<FolderLink>>,
    },
    Link {
        link: FolderLink,
        reply: Reply<()>,
    },
    Unlink {
        dir: String,
        reply: Reply<bool>,
    },
    Records {
        dir: String,
        reply: Reply<BTreeMap<String, FileRecord>>,
    },
    Ingest {
        dir: String,
        ws: WorkspaceId,
        ops: Vec<DiskOp>,
        now_ms: u64,
        reply: Reply<Ingested>,
    },
    Record {
        dir: String,
        records: Vec<(String, Option<FileRecord>)>,
        reply: Reply<()>,
    },
    Heads {
        ws: WorkspaceId,
        prefixes: Option<Vec<String>>,
        reply: Reply<(bool, Vec<FileHeads>)>,
    },
    Index {
        ws: WorkspaceId,
        reply: Reply<Arc<FileIndex>>,
    },
    States {
        ws: WorkspaceId,
        paths: Vec<WorkspacePath>,
        reply: Reply<Vec<(WorkspacePath, Option<FileState>)>>,
    },
}

/// The record of a file synced in state `state` with disk stamp `disk`.
pub fn record_of(state: &FileState, disk: Option<DiskStamp>) -> FileRecord {
    FileRecord {
        base: state.base(),
        content_hash: *blake3::hash(&state.bytes).as_bytes(),
        disk,
    }
}

impl Store {
    async fn folder<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> FolderCommand,
    ) -> Result<T, StoreError> {
        self.ask(|reply| super::Command::Folder(make(reply))).await
    }

    /// Every linked folder.
    pub async fn folder_links(&self) -> Result<Vec<FolderLink>, StoreError> {
        self.folder(|reply| FolderCommand::Links { reply }).await
    }

    /// Records a link (the directory must not be inside or around another).
    pub async fn link_folder(&self, link: FolderLink) -> Result<(), StoreError> {
        self.folder(|reply| FolderCommand::Link { link, reply })
            .await
    }

    /// Forgets a link and its records; whether there was one.
    pub async fn unlink_folder(&self, dir: String) -> Result<bool, StoreError> {
        self.folder(|reply| FolderCommand::Unlink { dir, reply })
            .await
    }

    /// The sync records of every file of a folder, by path.
    pub async fn folder_records(
        &self,
        dir: String,
    ) -> Result<BTreeMap<String, FileRecord>, StoreError> {
        self.folder(|reply| FolderCommand::Records { dir, reply })
            .await
    }

    /// Takes changes seen on disk into the workspace, in one commit with
    /// their sync records.
    pub async fn folder_ingest(
        &self,
        dir: String,
        ws: WorkspaceId,
        ops: Vec<DiskOp>,
        now_ms: u64,
    ) -> Result<Ingested, StoreError> {
        self.folder(|reply| FolderCommand::Ingest {
            dir,
            ws,
            ops,
            now_ms,
            reply,
        })
        .await
    }

    /// Saves sync records (after files were written to disk).
    pub async fn folder_record(
        &self,
        dir: String,
        records: Vec<(String, Option<FileRecord>)>,
    ) -> Result<(), StoreError> {
        self.folder(|reply| FolderCommand::Record {
            dir,
            records,
            reply,
        })
        .await
    }

    /// Queues sync records to save and returns without waiting for the
    /// commit: the receiver says how it went. The folder's next pass need
    /// not wait for it (its own records are in memory; the actor keeps
    /// commands in order).
    pub async fn folder_record_queued(
        &self,
        dir: String,
        records: Vec<(String, Option<FileRecord>)>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<(), StoreError>>, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send_command(super::Command::Folder(FolderCommand::Record {
            dir,
            records,
            reply,
        }))
        .await?;
        Ok(rx)
    }

    /// Whether this node may write to `ws` now, and the heads of its files:
    /// all of them, or (`prefixes`) those at or under each prefix.
    pub async fn file_heads(
        &self,
        ws: WorkspaceId,
        prefixes: Option<Vec<String>>,
    ) -> Result<(bool, Vec<FileHeads>), StoreError> {
        self.folder(|reply| FolderCommand::Heads {
            ws,
            prefixes,
            reply,
        })
        .await
    }

    /// The workspace's file index (paths and documents), shared.
    pub async fn file_index(&self, ws: WorkspaceId) -> Result<Arc<FileIndex>, StoreError> {
        self.folder(|reply| FolderCommand::Index { ws, reply })
            .await
    }

    /// The current state of some files.
    pub async fn file_states(
        &self,
        ws: WorkspaceId,
        paths: Vec<WorkspacePath>,
    ) -> Result<Vec<(WorkspacePath, Option<FileState>)>, StoreError> {
        self.folder(|reply| FolderCommand::States { ws, paths, reply })
            .await
    }
}

impl Actor {
    pub(super) fn handle_folder(&mut self, cmd: FolderCommand) {
        match cmd {
            FolderCommand::Links { reply } => {
                self.flush();
                let _ = reply.send(self.read_links());
            }
            FolderCommand::Link { link, reply } => {
                let r = self.check_link(&link);
                match r {
                    Ok(()) => {
                        self.disk.staged_folders.push(FolderWrite::Link(link));
                        self.disk.defer(Ok(()), reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            FolderCommand::Unlink { dir, reply } => {
                self.flush();
                let known = self
                    .read_links()
                    .map(|links| links.iter().any(|l| l.dir == dir));
                match known {
                    Ok(true) => {
                        self.disk.staged_folders.push(FolderWrite::Unlink(dir));
                        self.disk.defer(Ok(true), reply);
                    }
                    other => {
                        let _ = reply.send(other);
                    }
                }
            }
            FolderCommand::Records { dir, reply } => {
                self.flush();
                let _ = reply.send(self.read_records(&dir));
            }
            FolderCommand::Ingest {
                dir,
                ws,
                ops,
                now_ms,
                reply,
            } => {
                let made = self.ingest(&dir, ws, ops, now_ms);
                self.disk.defer(made, reply);
            }
            FolderCommand::Record {
                dir,
                records,
                reply,
            } => {
                for (path, record) in records {
                    self.disk.staged_folders.push(FolderWrite::Record {
                        dir: dir.clone(),
                        path,
                        record,
                    });
                }
                self.disk.defer(Ok(()), reply);
            }
            FolderCommand::Heads {
                ws,
                prefixes,
                reply,
            } => {
                self.flush();
                let me = self.author.peer_id.clone();
                let r = match self.workspaces.get_mut(&ws) {
                    Some(w) => {
                        let may_write = w
                            .effective_role(&me, crate::now_ms())
                            .is_some_and(|r| r.allows(Right::Write));
                        let heads = match prefixes {
                            None => w.file_heads(None),
                            Some(ps) => ps.iter().flat_map(|p| w.file_heads(Some(p))).collect(),
                        };
                        Ok((may_write, heads))
                    }
                    None => Err(StoreError::WorkspaceNotFound(ws)),
                };
                let _ = reply.send(r);
            }
            FolderCommand::Index { ws, reply } => {
                self.flush();
                let r = self
                    .workspaces
                    .get(&ws)
                    .map(|w| w.file_index())
                    .ok_or(StoreError::WorkspaceNotFound(ws));
                let _ = reply.send(r);
            }
            FolderCommand::States { ws, paths, reply } => {
                self.flush();
                let r = match self.workspaces.get_mut(&ws) {
                    Some(w) => Ok(paths
                        .into_iter()
                        .map(|p| {
                            // A file the index names whose document has not
                            // arrived yet has no content to write: writing
                            // it empty would only be written over when it
                            // arrives (its arrival is a `FileChanged`).
                            let state = w.file_state(&p).filter(|s| !s.heads.is_empty());
                            (p, state)
                        })
                        .collect()),
                    None => Err(StoreError::WorkspaceNotFound(ws)),
                };
                let _ = reply.send(r);
            }
        }
    }

    fn read_links(&self) -> Result<Vec<FolderLink>, StoreError> {
        let db = self.disk.db()?;
        let read = db.begin_read().map_err(classify)?;
        let table = read.open_table(FOLDERS).map_err(classify)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(classify)? {
            let (_, value) = entry.map_err(classify)?;
            match postcard::from_bytes::<FolderLink>(value.value()) {
                Ok(link) => out.push(link),
                Err(e) => tracing::warn!(error = %e, "skipping an unreadable folder link"),
            }
        }
        Ok(out)
    }

    /// A link is refused if its workspace is not here, or its directory is,
    /// contains or lies inside a linked one (one file, one workspace).
    fn check_link(&mut self, link: &FolderLink) -> Result<(), StoreError> {
        if !self.workspaces.contains_key(&link.workspace) {
            return Err(StoreError::WorkspaceNotFound(link.workspace));
        }
        self.flush();
        let nested =
            |a: &str, b: &str| a == b || b.starts_with(&format!("{}/", a.trim_end_matches('/')));
        for other in self.read_links()? {
            if nested(&other.dir, &link.dir) || nested(&link.dir, &other.dir) {
                return Err(super::BadRequest::FolderTaken {
                    dir: link.dir.clone(),
                    linked: other.dir,
                }
                .into());
            }
        }
        Ok(())
    }

    fn read_records(&self, dir: &str) -> Result<BTreeMap<String, FileRecord>, StoreError> {
        let db = self.disk.db()?;
        let read = db.begin_read().map_err(classify)?;
        let table = read.open_table(FOLDER_FILES).map_err(classify)?;
        let mut out = BTreeMap::new();
        for entry in table.range((dir, "")..).map_err(classify)? {
            let (key, value) = entry.map_err(classify)?;
            let (d, path) = key.value();
            if d != dir {
                break;
            }
            if let Ok(record) = postcard::from_bytes::<FileRecord>(value.value()) {
                out.insert(path.to_owned(), record);
            }
        }
        Ok(out)
    }

    fn ingest(
        &mut self,
        dir: &str,
        ws: WorkspaceId,
        ops: Vec<DiskOp>,
        now_ms: u64,
    ) -> Result<Ingested, StoreError> {
        let max_text = self.disk.options.max_text_bytes;
        let mut records = Vec::new();
        let out = self.write(ws, |w, author| {
            let mut out = Vec::with_capacity(ops.len());
            let mut changes = Vec::new();
            w.begin_index_batch();
            for op in ops {
                match op {
                    DiskOp::Write {
                        path,
                        bytes,
                        stamp,
                        base,
                    } => {
                        let made = random_nonce().map_err(|e| e.to_string()).and_then(|nonce| {
                            w.ingest(
                                &path,
                                &bytes,
                                Some(stamp.mode),
                                base.as_ref(),
                                author,
                                now_ms,
                                nonce,
                                max_text,
                            )
                            .map_err(|e| e.to_string())
                        });
                        match made {
                            Ok(c) => {
                                changes.extend(c);
                                let state = w.file_state(&path);
                                if let Some(s) = &state {
                                    records
                                        .push((path.to_string(), Some(record_of(s, Some(stamp)))));
                                }
                                out.push((path, Ok(state)));
                            }
                            Err(e) => out.push((path, Err(e))),
                        }
                    }
                    DiskOp::Remove { path, base } => {
                        // The batch's new files first, in their own change:
                        // a removal or rename that fails rolls the index
                        // back, and must take back only itself.
                        changes.extend(w.commit_index_batch(now_ms));
                        match w.remove_if_unchanged(&path, &base, now_ms) {
                            Ok(Some(c)) => {
                                changes.extend(c);
                                records.push((path.to_string(), None));
                                out.push((path, Ok(None)));
                            }
                            Ok(None) => {
                                let state = w.file_state(&path);
                                out.push((path, Ok(state)));
                            }
                            Err(e) => out.push((path, Err(e.to_string()))),
                        }
                    }
                    DiskOp::Rename {
                        from,
                        to,
                        stamp,
                        base,
                    } => {
                        changes.extend(w.commit_index_batch(now_ms));
                        let moved = if w.file_state(&from).is_some_and(|s| s.doc == base.doc) {
                            w.rename_file(&from, &to, author, now_ms)
                        } else {
                            Err(crate::workspace::WorkspaceError::FileNotFound(from.clone()))
                        };
                        match moved {
                            Ok(c) => {
                                changes.extend(c);
                                records.push((from.to_string(), None));
                                let state = w.file_state(&to);
                                if let Some(s) = &state {
                                    records.push((to.to_string(), Some(record_of(s, Some(stamp)))));
                                }
                                out.push((from, Ok(None)));
                                out.push((to, Ok(state)));
                            }
                            Err(e) => out.push((to, Err(e.to_string()))),
                        }
                    }
                }
            }
            changes.extend(w.end_index_batch(now_ms));
            Ok((out, changes))
        })?;
        for (path, record) in records {
            self.disk.staged_folders.push(FolderWrite::Record {
                dir: dir.to_owned(),
                path,
                record,
            });
        }
        Ok(out)
    }
}

/// The directories linked to workspace `ws`, read inside a write transaction.
pub(super) fn links_of(
    tx: &redb::WriteTransaction,
    ws: &WorkspaceId,
) -> Result<Vec<String>, StoreError> {
    let links = tx.open_table(FOLDERS).map_err(classify)?;
    let mut out = Vec::new();
    for entry in links.iter().map_err(classify)? {
        let (k, v) = entry.map_err(classify)?;
        if postcard::from_bytes::<FolderLink>(v.value()).is_ok_and(|l| l.workspace == *ws) {
            out.push(k.value().to_owned());
        }
    }
    Ok(out)
}

/// Writes staged folder changes inside the store's commit.
pub(super) fn commit(
    tx: &redb::WriteTransaction,
    writes: &[FolderWrite],
) -> Result<(), StoreError> {
    if writes.is_empty() {
        return Ok(());
    }
    let mut links = tx.open_table(FOLDERS).map_err(classify)?;
    let mut files = tx.open_table(FOLDER_FILES).map_err(classify)?;
    for w in writes {
        match w {
            FolderWrite::Link(link) => {
                let bytes = postcard::to_stdvec(link)?;
                links
                    .insert(link.dir.as_str(), bytes.as_slice())
                    .map_err(classify)?;
            }
            FolderWrite::Unlink(dir) => {
                links.remove(dir.as_str()).map_err(classify)?;
                let mut keys = Vec::new();
                for entry in files.range((dir.as_str(), "")..).map_err(classify)? {
                    let (key, _) = entry.map_err(classify)?;
                    let (d, path) = key.value();
                    if d != dir {
                        break;
                    }
                    keys.push(path.to_owned());
                }
                for path in keys {
                    files
                        .remove((dir.as_str(), path.as_str()))
                        .map_err(classify)?;
                }
            }
            FolderWrite::Record { dir, path, record } => match record {
                Some(r) => {
                    let bytes = postcard::to_stdvec(r)?;
                    files
                        .insert((dir.as_str(), path.as_str()), bytes.as_slice())
                        .map_err(classify)?;
                }
                None => {
                    files
                        .remove((dir.as_str(), path.as_str()))
                        .map_err(classify)?;
                }
            },
        }
    }
    Ok(())
}
