//! Automerge documents made by other applications, in and out
//! (`xencode file import` / `file export`).
//!
//! Export is the file's own document, saved: any Automerge application
//! loads it and finds the text at the root's `text` (or the bytes at `data`).
//!
//! Import cannot take the foreign changes as they are: every node refuses a
//! change whose actor is not its signed author's (`ids::actor_id`), so a
//! stranger's actors would never sync. Instead the foreign history is
//! replayed, version by version, as the importer's own changes: the foreign
//! changes are applied in causal order to a scratch document and, after each,
//! what happened to the chosen text becomes character splices (Automerge's own
//! patches, or a comparison where the field was replaced). Each version keeps
//! its author's time and names its original actor, sequence number and
//! message in the commit message, after the access citation. Long histories
//! are grouped (consecutive changes per version) so a file never gets more
//! than [`ImportLimits::max_versions`] changes, and so the replay's cost —
//! versions × operations, as Automerge applies a batch by walking the
//! document — stays within [`REPLAY_BUDGET`].
//!
//! Everything here is pure: bytes in, versions out.

use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::{
    AutoCommit, Change, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value,
};
use xencode_protocol::api::SpliceEdit;
use xencode_protocol::chunks::{self, ChunkError};

use super::editing::{check_edits, text_patches};
use super::{
    Author, NewChange, Workspace, WorkspaceError, damaged, file_info, get_text_obj, merge, stamp,
};
use automerge::transaction::Transactable;
use xencode_protocol::WorkspacePath;
use xencode_protocol::api::FileInfo;

/// Operations visited, summed over the versions of a replay: Automerge 0.12
/// applies each batch of changes by walking the document so far, about
/// 370 ns per operation on this project's 2-core test machine (measured on
/// the automerge-perf paper document, `docs/benchmarks.md`), so this keeps a
/// replay near 2 s.
const REPLAY_BUDGET: usize = 5_000_000;
/// However long the history, at least this many versions are kept (the
/// paper document, 259,779 changes, gets 100 versions of ~2,600 keystrokes).
const MIN_VERSIONS: usize = 100;

/// Bounds on what an import may cost.
#[derive(Debug, Clone, Copy)]
pub struct ImportLimits {
    /// Most bytes the document may inflate to before Automerge loads it.
    pub max_inflated: usize,
    /// Most changes in the foreign history.
    pub max_changes: usize,
    /// Most versions (own changes) the imported file gets.
    pub max_versions: usize,
    /// The longest text, in UTF-8 bytes (`store.max_text_bytes`).
    pub max_text_bytes: usize,
}

impl ImportLimits {
    /// The node's limits for a store whose texts may be `max_text_bytes`.
    pub fn for_text(max_text_bytes: usize) -> Self {
        Self {
            max_inflated: 256 << 20,
            max_changes: 1_000_000,
            max_versions: 10_000,
            max_text_bytes,
        }
    }
}

/// Why a document was not imported (each names what to do).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error("the file is not an Automerge document: {0}")]
    Chunks(ChunkError),
    #[error("Automerge could not load the document: {0}")]
    Load(String),
    #[error(
        "the document has no text at its root's `{field}`; its root holds: {found} (choose one with --field)"
    )]
    NoText { field: String, found: String },
    #[error("the document's history has {changes} changes; at most {max} are imported")]
    TooManyChanges { changes: usize, max: usize },
    #[error(
        "the text reaches {bytes} bytes, over store.max_text_bytes ({max}); a file that large is stored whole and takes no character edits, so its history cannot be kept — raise store.max_text_bytes in config.toml to import it"
    )]
    TooLong { bytes: usize, max: usize },
}

/// One version of the imported text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// From the version before (each relative to the text the ones before
    /// it left).
    pub edits: Vec<SpliceEdit>,
    /// The author's time of the last change in it, seconds since the epoch
    /// (0 if it recorded none).
    pub time_s: i64,
    /// Whose it was: the line added to the commit message.
    pub note: String,
}

/// A foreign document's text history, ready to replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Foreign {
    pub versions: Vec<Version>,
    /// Changes in the foreign history (some may not touch the text).
    pub changes: usize,
    /// Distinct actors among them.
    pub actors: usize,
    /// The final text.
    pub text: String,
    /// The longest the text was, in characters.
    pub peak_chars: usize,
}

impl Foreign {
    /// Whether the text fits a store whose texts may be `max_text_bytes`.
    pub fn fits(&self, max_text_bytes: usize) -> Result<(), ImportError> {
        let bytes = self.text.len().max(self.peak_chars);
        if bytes > max_text_bytes {
            return Err(ImportError::TooLong {
                bytes,
                max: max_text_bytes,
            });
        }
        Ok(())
    }
}

/// Reads `bytes` (a saved Automerge document, or concatenated changes) and
/// the history of the text at the root's `field`.
pub fn read(bytes: &[u8], field: &str, limits: ImportLimits) -> Result<Foreign, ImportError> {
    chunks::inflated_len(bytes, limits.max_inflated).map_err(ImportError::Chunks)?;
    // Automerge decodes crafted input under `catch_unwind` everywhere in the
    // node (see `sync::guarded`); a panic here is a refusal too.
    let loaded = catch_unwind(AssertUnwindSafe(|| AutoCommit::load(bytes)))
        .map_err(|_| ImportError::Load("the document is malformed".into()))?;
    let mut doc = loaded.map_err(|e| ImportError::Load(e.to_string()))?;
    if matches!(Field::of(&doc, field), Field::Absent) {
        return Err(ImportError::NoText {
            field: field.to_owned(),
            found: root_summary(&doc),
        });
    }
    let text = Field::of(&doc, field).text(&doc, None);
    let changes = doc.get_changes(&[]);
    // The changes are all the replay needs: the loaded document goes.
    drop(doc);
    if changes.len() > limits.max_changes {
        return Err(ImportError::TooManyChanges {
            changes: changes.len(),
            max: limits.max_changes,
        });
    }
    let actors = changes
        .iter()
        .map(Change::actor_id)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    // Automerge applies each batch by walking the whole document so far, so
    // the replay costs about (versions × operations): the versions are
    // bounded by a work budget as well, so a long history imports in bounded
    // time (coarser versions for a long history; every change for a short).
    let ops: usize = changes.iter().map(Change::len).sum();
    let max_versions = limits
        .max_versions
        .min((REPLAY_BUDGET / ops.max(1)).max(MIN_VERSIONS))
        .max(1);
    let group = changes.len().div_ceil(max_versions).max(1);
    let mut scratch = AutoCommit::new();
    let mut versions = Vec::new();
    let mut before: Vec<ChangeHash> = Vec::new();
    let mut was = Field::Absent;
    let mut peak = 0usize;
    for batch in changes.chunks(group) {
        // The patches Automerge logs while applying are what is wanted here,
        // and `diff_incremental` below takes and clears them every batch.
        #[allow(clippy::disallowed_methods)]
        let applied = catch_unwind(AssertUnwindSafe(|| scratch.apply_changes(batch.to_vec())));
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ImportError::Load(e.to_string())),
            Err(_) => return Err(ImportError::Load("a change is malformed".into())),
        }
        let patches = scratch.diff_incremental();
        let is = Field::of(&scratch, field);
        let edits = match (&was, &is) {
            (Field::Text(a), Field::Text(b)) if a == b => text_patches(patches, b, field),
            _ => None,
        }
        .unwrap_or_else(|| {
            let old = was.text(&scratch, Some(&before));
            merge::splices(&old, &is.text(&scratch, None))
        });
        before = scratch.get_heads();
        was = is;
        if edits.is_empty() {
            continue;
        }
        // Characters bound bytes from below: a cheap check per version.
        peak = peak.max(was.chars(&scratch));
        if peak > limits.max_text_bytes {
            return Err(ImportError::TooLong {
                bytes: peak,
                max: limits.max_text_bytes,
            });
        }
        versions.push(Version {
            edits,
            time_s: batch.last().map_or(0, Change::timestamp),
            note: note(batch),
        });
    }
    if text.len() > limits.max_text_bytes {
        return Err(ImportError::TooLong {
            bytes: text.len(),
            max: limits.max_text_bytes,
        });
    }
    Ok(Foreign {
        versions,
        changes: changes.len(),
        actors,
        text,
        peak_chars: peak,
    })
}

impl Workspace {
    /// Makes `path` a new text file holding `foreign`'s history: one change
    /// per version, by `author`, at the version's own time (never later than
    /// `now_ms`). Refused if `path` exists.
    pub fn import_file(
        &mut self,
        path: &WorkspacePath,
        foreign: &Foreign,
        author: &Author,
        now_ms: u64,
        new_doc_nonce: [u8; 16],
    ) -> Result<(FileInfo, Vec<NewChange>), WorkspaceError> {
        if self.has_file(path) {
            return Err(WorkspaceError::FileExists(path.clone()));
        }
        // Validate first, mutate after: every edit must fit the text the
        // ones before it leave, or nothing is made.
        check_edits(foreign.versions.iter().flat_map(|v| &v.edits), 0)?;
        let mut changes = Vec::new();
        let id = self.file_doc_or_new(path, author, now_ms, new_doc_nonce, &mut changes)?;
        let cites = self.access.am.get_heads();
        let now_s = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
        let doc = self
            .files
            .get_mut(&id)
            .ok_or_else(|| WorkspaceError::Damaged("file document vanished".into()))?;
        let text = doc
            .am
            .put_object(ROOT, "text", ObjType::Text)
            .map_err(damaged)?;
        let last = foreign.versions.len().saturating_sub(1);
        for (i, version) in foreign.versions.iter().enumerate() {
            for e in &version.edits {
                let (Ok(pos), Ok(delete)) = (usize::try_from(e.pos), isize::try_from(e.delete))
                else {
                    return Err(WorkspaceError::Damaged(
                        "an imported edit is out of range".into(),
                    ));
                };
                doc.am
                    .splice_text(&text, pos, delete, &e.insert)
                    .map_err(|e| WorkspaceError::Damaged(format!("imported history: {e}")))?;
            }
            let secs = if version.time_s > 0 {
                version.time_s.min(now_s)
            } else {
                now_s
            };
            if i == last {
                let at = u64::try_from(secs).unwrap_or(0).saturating_mul(1000);
                stamp(&mut doc.am, author, at).map_err(damaged)?;
            }
            changes.extend(doc.commit_noted(secs, &cites, Some(&version.note)));
        }
        if foreign.versions.is_empty() {
            // An empty text: the file exists, with nothing to replay.
            stamp(&mut doc.am, author, now_ms).map_err(damaged)?;
            changes.extend(doc.commit(now_ms, &cites));
        }
        let doc = self.existing_file(path)?;
        if get_text_obj(&doc.am).is_none() {
            return Err(WorkspaceError::Damaged(
                "the imported file has no text".into(),
            ));
        }
        Ok((
            file_info(path.clone(), super::parking::facts_of(&doc.am)),
            changes,
        ))
    }

    /// The file's document as Automerge saves it: any Automerge application
    /// loads it (the text at the root's `text`, or the bytes at `data`).
    pub fn export_file(&mut self, path: &WorkspacePath) -> Result<Vec<u8>, WorkspaceError> {
        let id = self.existing_file(path)?.id;
        let doc = self
            .files
            .get_mut(&id)
            .ok_or_else(|| WorkspaceError::FileNotFound(path.clone()))?;
        Ok(doc.am.save())
    }
}

/// What the root's import field holds after a batch.
enum Field {
    Absent,
    /// A Text object (its id: the same object across batches means its
    /// patches are the edits).
    Text(ObjId),
    /// A string, replaced whole by each change.
    Str(String),
}

impl Field {
    /// The field in `am` now. Reading the current state, never at past
    /// heads: Automerge computes a clock over the whole history for each
    /// read at heads, which per version would make an import quadratic.
    fn of(am: &AutoCommit, field: &str) -> Self {
        match am.get(ROOT, field) {
            Ok(Some((Value::Object(ObjType::Text), id))) => Field::Text(id),
            Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Str(s) => Field::Str(s.to_string()),
                _ => Field::Absent,
            },
            _ => Field::Absent,
        }
    }

    /// Its text; a Text object's at `heads` when given (only when the field
    /// was replaced: rare).
    fn text(&self, am: &AutoCommit, heads: Option<&[ChangeHash]>) -> String {
        match (self, heads) {
            (Field::Absent, _) => String::new(),
            (Field::Str(s), _) => s.clone(),
            (Field::Text(id), None) => am.text(id).unwrap_or_default(),
            (Field::Text(id), Some(heads)) => am.text_at(id, heads).unwrap_or_default(),
        }
    }

    /// Its length in characters.
    fn chars(&self, am: &AutoCommit) -> usize {
        match self {
            Field::Absent => 0,
            Field::Str(s) => s.chars().count(),
            Field::Text(id) => am.length(id),
        }
    }
}

/// What the root holds, for the error that asks for `--field`.
fn root_summary(am: &AutoCommit) -> String {
    let parts: Vec<String> = am
        .keys(ROOT)
        .take(20)
        .map(|key| {
            let kind = match am.get(ROOT, key.as_str()) {
                Ok(Some((Value::Object(ObjType::Text), _))) => "text",
                Ok(Some((Value::Object(ObjType::Map | ObjType::Table), _))) => "map",
                Ok(Some((Value::Object(ObjType::List), _))) => "list",
                Ok(Some((Value::Scalar(s), _))) if matches!(s.as_ref(), ScalarValue::Str(_)) => {
                    "string"
                }
                _ => "value",
            };
            format!("{} ({kind})", printable(&key, 40))
        })
        .collect();
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

/// The commit-message line naming the foreign changes of one version.
fn note(batch: &[Change]) -> String {
    let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
        return String::new();
    };
    let actor = first.actor_id().to_hex_string();
    let mut note = if batch.len() == 1 {
        format!("imported from {actor} #{}", first.seq())
    } else {
        format!(
            "imported {} changes, from {actor} #{} to {} #{}",
            batch.len(),
            first.seq(),
            last.actor_id().to_hex_string(),
            last.seq()
        )
    };
    if let Some(m) = last.message().filter(|m| !m.is_empty()) {
        note.push_str(": ");
        note.push_str(&printable(m, 200));
    }
    note
}

/// `s` on one line, without control characters, at most `max` characters.
fn printable(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests;
