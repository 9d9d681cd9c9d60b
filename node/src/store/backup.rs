//! Backups and restores of the store.
//!
//! A backup is a fresh redb file holding every table as one read
//! transaction saw it: a consistent snapshot taken while the node keeps
//! running (redb readers never block the writer). It records whose store it
//! is, so it is only restored under the same identity.
//!
//! A restore (node stopped) puts a backup in place of the store, keeps the
//! replaced file, forgets the per-peer sync states (peers may hold more than
//! the backup), and starts a new actor epoch: changes made after the backup
//! were sent to peers under the old epoch's sequence numbers, and reusing
//! them would make Automerge diverge (ARCHITECTURE section 3).

use std::path::{Path, PathBuf};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};

use super::OpenError;
use super::tables::{
    self, ADDRESS_CARDS, AI_CACHE, AUDIT, CHANGES, DOCS, FILE_FACTS, MEMBERSHIPS, META, REFUSALS,
    SIGNATURES, SNAPSHOTS, SYNC_STATES, WORKSPACES,
};

/// Meta key naming the peer whose store a backup is.
const BACKUP_OF: &str = "backup-of";
/// Meta key with the backup's creation time (Unix ms).
const BACKUP_AT: &str = "backup-at";

/// What a backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    pub workspaces: u64,
    pub bytes: u64,
}

fn copy<K, V>(
    src: &ReadTransaction,
    dst: &redb::WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<u64, redb::Error>
where
    K: redb::Key + 'static,
    V: redb::Value + 'static,
{
    let from = match src.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut to = dst.open_table(def)?;
    let mut n = 0;
    for entry in from.iter()? {
        let (k, v) = entry?;
        to.insert(k.value(), v.value())?;
        n += 1;
    }
    Ok(n)
}

/// Writes everything `snapshot` sees into a new store file at `dest` (which
/// must not exist), fsync'd.
pub fn write(
    snapshot: &ReadTransaction,
    dest: &Path,
    peer_id: &str,
    now_ms: u64,
) -> Result<BackupInfo, BackupError> {
    let fail = |source: redb::Error| BackupError::Storage {
        path: dest.to_owned(),
        source,
    };
    let io = |source: std::io::Error| BackupError::Io {
        path: dest.to_owned(),
        source,
    };
    // A backup holds every workspace's content and the node's tokens.
    crate::paths::ensure_private_file(dest).map_err(io)?;
    let db = Database::builder()
        .create(dest)
        .map_err(|e| fail(e.into()))?;
    let tx = db.begin_write().map_err(|e| fail(e.into()))?;
    let workspaces = (|| -> Result<u64, redb::Error> {
        copy(snapshot, &tx, META)?;
        let n = copy(snapshot, &tx, WORKSPACES)?;
        copy(snapshot, &tx, DOCS)?;
        copy(snapshot, &tx, CHANGES)?;
        copy(snapshot, &tx, SNAPSHOTS)?;
        copy(snapshot, &tx, FILE_FACTS)?;
        copy(snapshot, &tx, SIGNATURES)?;
        copy(snapshot, &tx, MEMBERSHIPS)?;
        copy(snapshot, &tx, SYNC_STATES)?;
        copy(snapshot, &tx, AI_CACHE)?;
        copy(snapshot, &tx, AUDIT)?;
        copy(snapshot, &tx, REFUSALS)?;
        copy(snapshot, &tx, ADDRESS_CARDS)?;
        let mut meta = tx.open_table(META)?;
        meta.insert(BACKUP_OF, peer_id.as_bytes())?;
        meta.insert(BACKUP_AT, now_ms.to_le_bytes().as_slice())?;
        Ok(n)
    })()
    .map_err(fail)?;
    tx.commit().map_err(|e| fail(e.into()))?;
    drop(db);
    let bytes = std::fs::metadata(dest).map_err(io)?.len();
    Ok(BackupInfo { workspaces, bytes })
}

/// Why a backup could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error("writing the backup {path}: {source}")]
    Storage {
        path: PathBuf,
        #[source]
        source: redb::Error,
    },
    #[error("writing the backup {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The result of a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub workspaces: u64,
    pub epoch: u64,
    /// Where the replaced store was kept, if there was one.
    pub previous: Option<PathBuf>,
}

/// Why a restore was refused.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0} is not a xencode backup: {1}")]
    NotABackup(PathBuf, String),
    #[error(
        "{path} is a backup of peer {of}, not of this node ({me}); restore it with that node's identity.key"
    )]
    OtherNode {
        path: PathBuf,
        of: String,
        me: String,
    },
    #[error("the store {0} is in use: stop the node (`xencode node`) before restoring")]
    InUse(PathBuf),
    #[error("{0}")]
    Store(#[from] OpenError),
    #[error("restoring into {path}: {detail}")]
    Io { path: PathBuf, detail: String },
}

fn meta_u64(tx: &ReadTransaction, key: &str) -> Option<u64> {
    let meta = tx.open_table(META).ok()?;
    let v = meta.get(key).ok()??;
    Some(u64::from_le_bytes(v.value().try_into().ok()?))
}

/// Puts the backup `from` in place of the store `store` of peer `me`, with a
/// new actor epoch above both files' epochs.
pub fn restore(from: &Path, store: &Path, me: &str, now_ms: u64) -> Result<Restored, RestoreError> {
    let not_backup =
        |d: &dyn std::fmt::Display| RestoreError::NotABackup(from.to_owned(), d.to_string());
    tables::check_magic(from).map_err(|e| not_backup(&e))?;
    // Check the backup without writing to it.
    let (backup_epoch, workspaces) = {
        let ro = Database::builder()
            .open_read_only(from)
            .map_err(|e| not_backup(&e))?;
        tables::inspect(&ro, from).map_err(|e| not_backup(&e))?;
        let tx = ro.begin_read().map_err(|e| not_backup(&e))?;
        let of = tx
            .open_table(META)
            .ok()
            .and_then(|m| m.get(BACKUP_OF).ok().flatten().map(|v| v.value().to_vec()))
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .ok_or_else(|| not_backup(&"it names no node (made by `xencode backup`?)"))?;
        if of != me {
            return Err(RestoreError::OtherNode {
                path: from.to_owned(),
                of,
                me: me.to_owned(),
            });
        }
        let n = tx
            .open_table(WORKSPACES)
            .ok()
            .and_then(|t| redb::ReadableTableMetadata::len(&t).ok())
            .unwrap_or(0);
        (meta_u64(&tx, "epoch").unwrap_or(0), n)
    };
    // The current store's epoch, if it can be read; it must not be open.
    let current_epoch = if store.exists() {
        match Database::builder().open_read_only(store) {
            Ok(db) => db
                .begin_read()
                .ok()
                .and_then(|tx| meta_u64(&tx, "epoch"))
                .unwrap_or(0),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(RestoreError::InUse(store.to_owned()));
            }
            // A damaged store is what restores are for: replace it.
            Err(_) => 0,
        }
    } else {
        0
    };
    let epoch = backup_epoch.max(current_epoch) + 1;
    let io = |d: &dyn std::fmt::Display| RestoreError::Io {
        path: store.to_owned(),
        detail: d.to_string(),
    };
    let staging = store.with_extension("redb.restoring");
    let _ = std::fs::remove_file(&staging);
    std::fs::copy(from, &staging).map_err(|e| io(&e))?;
    // `copy` took the backup's mode; the store is private whatever it was.
    crate::paths::ensure_private_file(&staging).map_err(|e| io(&e))?;
    {
        let db = Database::builder().create(&staging).map_err(|e| io(&e))?;
        let tx = db.begin_write().map_err(|e| io(&e))?;
        (|| -> Result<(), redb::Error> {
            let mut meta = tx.open_table(META)?;
            meta.insert("epoch", epoch.to_le_bytes().as_slice())?;
            meta.remove(BACKUP_OF)?;
            meta.remove(BACKUP_AT)?;
            drop(meta);
            tx.open_table(SYNC_STATES)?.retain(|_, _| false)?;
            Ok(())
        })()
        .map_err(|e| io(&e))?;
        tx.commit().map_err(|e| io(&e))?;
    }
    let previous = if store.exists() {
        let kept = store.with_extension(format!("redb.before-restore-{now_ms}"));
        std::fs::rename(store, &kept).map_err(|e| io(&e))?;
        Some(kept)
    } else {
        None
    };
    std::fs::rename(&staging, store).map_err(|e| io(&e))?;
    if let Some(dir) = store.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(Restored {
        workspaces,
        epoch,
        previous,
    })
}
