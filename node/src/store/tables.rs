//! Every redb table of the store, in one place, with versioned names, and the
//! schema check and migrations run at open.
//!
//! Tables (a schema change bumps [`SCHEMA_VERSION`], adds a migration below and
//! a test that opens a store of the old version):
//! - `meta-1`: `&str -> &[u8]`: `format` (= [`FORMAT`]), `schema_version` (u32
//!   LE), `epoch` (u64 LE, the Automerge actor epoch this node writes in);
//! - `workspaces-1`: workspace id -> unused (presence lists the workspace);
//! - `docs-1`: document id -> postcard [`DocRecord`];
//! - `changes-1`: (document id, counter) -> one Automerge change, compressed;
//! - `snapshots-1`: document id -> (last counter folded in, saved document);
//! - `signatures-1` (schema 2): (document id, change hash) -> postcard
//!   [`SignedHead`](xencode_protocol::envelope::SignedHead) of the author;
//! - `memberships-1` (schema 2): workspace id -> postcard [`Membership`]: this
//!   node's token, the root key, where to find the inviter;
//! - `sync-states-1` (schema 2): (peer id, document id) -> Automerge sync state;
//! - `ai-cache-1` (schema 3): blake3 of (prompt version, model identity,
//!   prompt) -> the model's answer (UTF-8); bounded, cleared when full;
//! - `audit-1` (schema 4): the hash-chained audit log (`audit.rs`);
//! - `refusals-1` (schema 5): sequence number -> postcard tally of refused
//!   unauthenticated API requests per minute, source and reason, under its
//!   own cap (`audit.rs`), so strangers never push members out of `audit-1`;
//! - `folders-1` (schema 6): directory -> postcard
//!   [`FolderLink`](super::folders::FolderLink), a folder linked to a workspace;
//! - `folder-files-1` (schema 6): (directory, path) -> postcard
//!   [`FileRecord`](super::folders::FileRecord): what was last synced between
//!   the file on disk and the workspace;
//! - `file-facts-1` (schema 7): document id -> postcard
//!   [`Facts`](crate::workspace::parking::Facts) of a file document as of
//!   its snapshot (what a listing shows), so that a document parked at start
//!   is listed without loading it. A cache: a missing entry costs a load.
//! - `address-cards-1` (schema 8): peer id -> postcard
//!   [`AddressCard`](xencode_protocol::card::AddressCard), the latest signed
//!   addresses of a member, to dial it by after a restart.

use std::fs;
use std::io::Read;
use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition, TableError, TableHandle};
use serde::{Deserialize, Serialize};

use super::OpenError;
use crate::workspace::DocKind;

/// Written into `meta-1` so a foreign redb file is recognised.
pub const FORMAT: &[u8] = b"xencode-store";
/// The schema this build reads and writes.
pub const SCHEMA_VERSION: u32 = 8;

pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta-1");
pub const WORKSPACES: TableDefinition<[u8; 16], ()> = TableDefinition::new("workspaces-1");
pub const DOCS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("docs-1");
pub const CHANGES: TableDefinition<([u8; 16], u64), &[u8]> = TableDefinition::new("changes-1");
pub const SNAPSHOTS: TableDefinition<[u8; 16], (u64, &[u8])> = TableDefinition::new("snapshots-1");
pub const SIGNATURES: TableDefinition<([u8; 16], [u8; 32]), &[u8]> =
    TableDefinition::new("signatures-1");
pub const MEMBERSHIPS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("memberships-1");
pub const SYNC_STATES: TableDefinition<(&str, [u8; 16]), &[u8]> =
    TableDefinition::new("sync-states-1");
pub const AI_CACHE: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("ai-cache-1");
/// The audit log: sequence number -> hash-chained record (see `audit.rs`).
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit-1");
/// Tallies of refused unauthenticated requests (see `audit.rs`).
pub const REFUSALS: TableDefinition<u64, &[u8]> = TableDefinition::new("refusals-1");
/// Linked folders (see `folders.rs`).
pub const FOLDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("folders-1");
/// Per file of a linked folder, what was last synced (see `folders.rs`).
pub const FOLDER_FILES: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("folder-files-1");
pub const FILE_FACTS: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("file-facts-1");
/// Members' latest address cards (see `card.rs` in the protocol crate).
pub const ADDRESS_CARDS: TableDefinition<&str, &[u8]> = TableDefinition::new("address-cards-1");

/// This node's membership of a workspace, kept beside the documents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The capability token this node presents to peers.
    pub token: Vec<u8>,
    /// The workspace creator's public key, the capability root.
    pub root_key: [u8; 32],
    /// Peers to dial for this workspace (the inviter), as (peer id, multiaddrs).
    pub contacts: Vec<(String, Vec<String>)>,
}

/// What `docs-1` records of a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocRecord {
    pub workspace: [u8; 16],
    pub kind: DocKind,
}

/// redb's file magic: a file that does not start with it is not a redb file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// A migration from schema `version` to `version + 1`, run in one write
/// transaction together with the version bump.
type Migration = fn(&redb::WriteTransaction) -> Result<(), redb::Error>;

/// `MIGRATIONS[i]` upgrades schema `i + 1` to `i + 2`. Schema 1 is the first.
const MIGRATIONS: &[Migration] = &[
    migrate_1_to_2,
    migrate_2_to_3,
    migrate_3_to_4,
    migrate_4_to_5,
    migrate_5_to_6,
    migrate_6_to_7,
    migrate_7_to_8,
];

/// Schema 2 adds signatures, memberships and sync states (empty: stores of
/// schema 1 predate networking, so their changes were never sent).
fn migrate_1_to_2(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(SIGNATURES)?;
    tx.open_table(MEMBERSHIPS)?;
    tx.open_table(SYNC_STATES)?;
    Ok(())
}

/// Schema 3 adds the AI response cache (empty).
fn migrate_2_to_3(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(AI_CACHE)?;
    Ok(())
}

/// Schema 4 adds the audit log (empty: the chain starts at the upgrade).
fn migrate_3_to_4(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(AUDIT)?;
    Ok(())
}

/// Schema 5 adds the tallies of refused unauthenticated requests (empty).
fn migrate_4_to_5(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(REFUSALS)?;
    Ok(())
}

/// Schema 6 adds linked folders and their per-file records (empty).
fn migrate_5_to_6(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(FOLDERS)?;
    tx.open_table(FOLDER_FILES)?;
    Ok(())
}

/// Schema 7 adds the listing facts of snapshotted file documents (empty:
/// filled as documents are compacted).
fn migrate_6_to_7(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(FILE_FACTS)?;
    Ok(())
}

/// Schema 8 adds members' address cards (empty: filled as members meet).
fn migrate_7_to_8(tx: &redb::WriteTransaction) -> Result<(), redb::Error> {
    tx.open_table(ADDRESS_CARDS)?;
    Ok(())
}

/// Refuses a file that exists but is not a redb database, before redb opens
/// (and possibly writes to) it.
pub fn check_magic(path: &Path) -> Result<(), OpenError> {
    let mut f = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(OpenError::Io {
                path: path.to_owned(),
                error: source,
            });
        }
    };
    let mut head = Vec::with_capacity(REDB_MAGIC.len());
    (&mut f)
        .take(REDB_MAGIC.len() as u64)
        .read_to_end(&mut head)
        .map_err(|source| OpenError::Io {
            path: path.to_owned(),
            error: source,
        })?;
    if head.is_empty() || head == REDB_MAGIC {
        Ok(())
    } else {
        Err(OpenError::NotAStore {
            path: path.to_owned(),
        })
    }
}

/// What a database file holds, as far as the store is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inspection {
    /// No tables at all: a new store.
    Empty,
    /// A xencode store of a schema this build can read (possibly older).
    Ours { version: u32, epoch: u64 },
}

/// Reads, without writing, whether `db` is a xencode store this build can
/// open. Works on a read-only handle, so a refused file stays untouched.
pub fn inspect(db: &impl ReadableDatabase, path: &Path) -> Result<Inspection, OpenError> {
    let internal = |e: &dyn std::fmt::Display| OpenError::Corrupt {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    let read = db.begin_read().map_err(|e| internal(&e))?;
    let meta = match read.open_table(META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => {
            let has_tables = read
                .list_tables()
                .map_err(|e| internal(&e))?
                .next()
                .is_some();
            return if has_tables {
                Err(OpenError::Foreign {
                    path: path.to_owned(),
                })
            } else {
                Ok(Inspection::Empty)
            };
        }
        Err(TableError::TableTypeMismatch { .. }) => {
            return Err(OpenError::Foreign {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(internal(&e)),
    };
    let get = |key: &str| -> Result<Option<Vec<u8>>, OpenError> {
        Ok(meta
            .get(key)
            .map_err(|e| internal(&e))?
            .map(|v| v.value().to_vec()))
    };
    if get("format")?.as_deref() != Some(FORMAT) {
        return Err(OpenError::Foreign {
            path: path.to_owned(),
        });
    }
    let version = get("schema_version")?
        .and_then(|v| v.try_into().ok())
        .map(u32::from_le_bytes)
        .ok_or_else(|| internal(&"schema_version is missing"))?;
    let epoch = get("epoch")?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(Inspection::Ours { version, epoch })
}

/// Checks an opened database, creating the tables of a new store and
/// migrating an older one. Returns the actor epoch.
pub fn prepare(db: &Database, path: &Path) -> Result<u64, OpenError> {
    let internal = |e: &dyn std::fmt::Display| OpenError::Corrupt {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    match inspect(db, path)? {
        Inspection::Empty => {
            initialize(db).map_err(|e| internal(&e))?;
            Ok(0)
        }
        Inspection::Ours { version, epoch } => {
            migrate(db, version).map_err(|e| internal(&e))?;
            Ok(epoch)
        }
    }
}

fn initialize(db: &Database) -> Result<(), redb::Error> {
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(META)?;
        meta.insert("format", FORMAT)?;
        meta.insert("schema_version", SCHEMA_VERSION.to_le_bytes().as_slice())?;
        meta.insert("epoch", 0u64.to_le_bytes().as_slice())?;
        tx.open_table(WORKSPACES)?;
        tx.open_table(DOCS)?;
        tx.open_table(CHANGES)?;
        tx.open_table(SNAPSHOTS)?;
        tx.open_table(SIGNATURES)?;
        tx.open_table(MEMBERSHIPS)?;
        tx.open_table(SYNC_STATES)?;
        tx.open_table(AI_CACHE)?;
        tx.open_table(AUDIT)?;
        tx.open_table(REFUSALS)?;
        tx.open_table(FOLDERS)?;
        tx.open_table(FOLDER_FILES)?;
        tx.open_table(FILE_FACTS)?;
        tx.open_table(ADDRESS_CARDS)?;
    }
    tx.commit()?;
    Ok(())
}

fn migrate(db: &Database, mut version: u32) -> Result<(), redb::Error> {
    while version < SCHEMA_VERSION {
        let step = MIGRATIONS
            .get(version as usize - 1)
            .ok_or_else(|| redb::Error::Corrupted(format!("no migration from schema {version}")))?;
        let tx = db.begin_write()?;
        step(&tx)?;
        tx.open_table(META)?
            .insert("schema_version", (version + 1).to_le_bytes().as_slice())?;
        tx.commit()?;
        tracing::info!(
            from = version,
            to = version + 1,
            "migrated the store schema"
        );
        version += 1;
    }
    Ok(())
}

/// Names of the tables this schema defines (for tests and tooling).
pub fn table_names() -> [&'static str; 5] {
    [
        META.name(),
        WORKSPACES.name(),
        DOCS.name(),
        CHANGES.name(),
        SNAPSHOTS.name(),
    ]
}
