//! Character edits to a text file: at the current version (the splice API,
//! the dashboard), or at a version an editor has seen (`xencode lsp`).
//!
//! An editor's keystrokes are relative to the text it holds, which may be
//! behind the node's: a teammate's edit may have arrived since. Such edits
//! are made *at* the version the editor saw (Automerge's isolation: the new
//! change depends on those heads only), so Automerge merges them with
//! whatever arrived meanwhile exactly as it merges two peers' edits; the
//! answer then tells the editor how to get from its text to the merged one
//! (the "catch-up"), which is what it displays next.

use automerge::PatchAction;
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ChangeHash, Cursor, CursorPosition, ObjId, ReadDoc};
use xencode_protocol::WorkspacePath;
use xencode_protocol::api::SpliceEdit;

use super::{Author, NewChange, Workspace, WorkspaceError, damaged, get_text_obj, merge, stamp};

/// What an edit did.
#[derive(Debug)]
pub struct Edited {
    /// Length of the text afterwards, in Unicode scalar values.
    pub chars: u64,
    /// The document's heads afterwards.
    pub heads: Vec<ChangeHash>,
    /// The version the editor holds now: its base plus its edits.
    pub mine: Vec<ChangeHash>,
    /// Edits (each relative to the text the ones before it left) that turn
    /// the text at `mine` into the text at `heads`; empty if they are the
    /// same. Only computed for edits made at a base.
    pub catch_up: Vec<SpliceEdit>,
    /// The change to persist, if any.
    pub changes: Vec<NewChange>,
}

impl Workspace {
    /// Applies character edits to a text file as one change. Each edit's
    /// position is relative to the text the edits before it left. Refused as
    /// a whole if any edit is out of range.
    pub fn splice(
        &mut self,
        path: &WorkspacePath,
        edits: &[SpliceEdit],
        author: &Author,
        now_ms: u64,
    ) -> Result<(u64, Vec<ChangeHash>, Vec<NewChange>), WorkspaceError> {
        let e = self.edit(path, None, edits, author, now_ms)?;
        Ok((e.chars, e.heads, e.changes))
    }

    /// Applies `edits` (relative to the text at `base`, or to the current
    /// text when `base` is `None`) as one change, merged with everything the
    /// document received since `base`. With a base, `edits` may be empty:
    /// the answer is then only the catch-up from `base`. An empty base is
    /// the empty document (its catch-up is the whole text).
    pub fn edit(
        &mut self,
        path: &WorkspacePath,
        base: Option<&[ChangeHash]>,
        edits: &[SpliceEdit],
        author: &Author,
        now_ms: u64,
    ) -> Result<Edited, WorkspaceError> {
        let doc_id = self.existing_file(path)?.id;
        let cites = self.access.am.get_heads();
        let doc = self
            .files
            .get_mut(&doc_id)
            .ok_or_else(|| WorkspaceError::FileNotFound(path.clone()))?;
        let text = get_text_obj(&doc.am).ok_or_else(|| WorkspaceError::NotText(path.clone()))?;
        if let Some(base) = base {
            if base.iter().any(|h| doc.am.get_change_by_hash(h).is_none()) {
                return Err(WorkspaceError::UnknownBase(path.clone()));
            }
            // Edits go into the text object the editor saw; one made before
            // the file was replaced (binary and back) cannot be placed.
            if !edits.is_empty() && text_at(&doc.am, base).as_ref() != Some(&text) {
                return Err(WorkspaceError::UnknownBase(path.clone()));
            }
        }
        // Validate the whole batch before touching the document.
        let len = match base {
            Some(b) => doc.am.length_at(&text, b),
            None => doc.am.length(&text),
        } as u64;
        check_edits(edits, len)?;
        let mut mine = base.map(<[ChangeHash]>::to_vec);
        let mut changes = Vec::new();
        if !edits.is_empty() {
            if let Some(b) = base {
                doc.am.isolate(b);
            }
            let applied = edits.iter().try_for_each(|e| {
                // Both fit in usize/isize: they are bounded by the text length.
                doc.am
                    .splice_text(&text, e.pos as usize, e.delete as isize, &e.insert)
            });
            let applied = applied.and_then(|()| stamp(&mut doc.am, author, now_ms));
            if let Err(err) = applied {
                doc.am.rollback();
                if base.is_some() {
                    doc.am.integrate();
                }
                return Err(damaged(err));
            }
            changes.extend(doc.commit(now_ms, &cites));
            if base.is_some() {
                mine = Some(doc.am.get_heads());
                doc.am.integrate();
            }
        }
        let heads = doc.heads();
        let chars = doc.am.length(&text) as u64;
        let catch_up = match &mine {
            Some(m) if *m != heads => catch_up(&mut doc.am, &text, m, &heads),
            _ => Vec::new(),
        };
        Ok(Edited {
            chars,
            mine: mine.unwrap_or_else(|| heads.clone()),
            heads,
            catch_up,
            changes,
        })
    }
}

impl Workspace {
    /// An Automerge cursor (its text form) at `offset` (Unicode scalar
    /// values) of a text file's text at `heads`: it stays on that character
    /// whatever is typed around it. `None` if the file, its text or those
    /// heads are unknown.
    pub fn cursor(
        &mut self,
        path: &WorkspacePath,
        offset: u64,
        heads: &[ChangeHash],
    ) -> Option<String> {
        let am = &self.existing_file(path).ok()?.am;
        let text = text_at(am, heads)?;
        let len = am.length_at(&text, heads);
        let at = match usize::try_from(offset) {
            Ok(o) if o < len => CursorPosition::Index(o),
            _ => CursorPosition::End,
        };
        am.get_cursor(&text, at, Some(heads))
            .ok()
            .map(|c| c.to_string())
    }

    /// Where a cursor (from [`Workspace::cursor`], perhaps a peer's) is in a
    /// text file's current text. `None` if it is not a cursor into it.
    pub fn cursor_position(&mut self, path: &WorkspacePath, cursor: &str) -> Option<u64> {
        let am = &self.existing_file(path).ok()?.am;
        let text = get_text_obj(am)?;
        // A peer's bytes. Automerge's parser slices the text as if it were
        // ASCII and not empty (it panics otherwise): check that first, and
        // never let a panic out whatever Automerge makes of the rest.
        if cursor.is_empty() || !cursor.is_ascii() {
            return None;
        }
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let cursor = Cursor::try_from(cursor).ok()?;
            am.get_cursor_position(&text, &cursor, None).ok()
        }));
        u64::try_from(found.ok()??).ok()
    }
}

/// Checks that each edit fits the text the ones before it leave, starting
/// from a text of `len` characters (so that splicing them cannot fail half
/// way); the length they leave.
pub(super) fn check_edits<'a>(
    edits: impl IntoIterator<Item = &'a SpliceEdit>,
    mut len: u64,
) -> Result<u64, WorkspaceError> {
    for (i, e) in edits.into_iter().enumerate() {
        let end = e.pos.checked_add(e.delete).filter(|end| *end <= len);
        if end.is_none() || isize::try_from(e.delete).is_err() {
            return Err(WorkspaceError::OutOfRange {
                edit: i,
                pos: e.pos,
                delete: e.delete,
                len,
            });
        }
        len = len - e.delete + e.insert.chars().count() as u64;
    }
    Ok(len)
}

/// The text object at `heads`, if there was one.
fn text_at(am: &AutoCommit, heads: &[ChangeHash]) -> Option<ObjId> {
    match am.get_at(automerge::ROOT, "text", heads) {
        Ok(Some((automerge::Value::Object(automerge::ObjType::Text), id))) => Some(id),
        _ => None,
    }
}

/// Edits from the text at `from` to the text (object `text`) at `to`:
/// Automerge's own diff when it only splices that text (cost in proportion
/// to what changed), else a comparison of the two texts.
fn catch_up(
    am: &mut AutoCommit,
    text: &ObjId,
    from: &[ChangeHash],
    to: &[ChangeHash],
) -> Vec<SpliceEdit> {
    if text_at(am, from).as_ref() == Some(text)
        && let Some(edits) = text_patches(am.diff(from, to), text, "text")
    {
        return edits;
    }
    let before = match text_at(am, from) {
        Some(t) => am.text_at(&t, from).unwrap_or_default(),
        None => String::new(),
    };
    let after = am.text_at(text, to).unwrap_or_default();
    merge::splices(&before, &after)
}

/// The patches as splices of `text` (the root's `field`), if that is all
/// they do to it.
pub(super) fn text_patches(
    patches: Vec<automerge::Patch>,
    text: &ObjId,
    field: &str,
) -> Option<Vec<SpliceEdit>> {
    let mut out: Vec<SpliceEdit> = Vec::new();
    for p in patches {
        if p.obj != *text {
            // The root's `field` replaced: not a splice.
            if p.obj == automerge::ROOT
                && matches!(&p.action, PatchAction::PutMap { key, .. } | PatchAction::DeleteMap { key } if key == field)
            {
                return None;
            }
            if p.path.iter().any(|(o, _)| o == text) {
                return None;
            }
            continue;
        }
        match p.action {
            PatchAction::SpliceText { index, value, .. } => out.push(SpliceEdit {
                pos: index as u64,
                delete: 0,
                insert: value.make_string(),
            }),
            PatchAction::DeleteSeq { index, length } => match out.last_mut() {
                // Insert then delete what followed: one replacement.
                Some(last)
                    if last.delete == 0
                        && last.pos + last.insert.chars().count() as u64 == index as u64 =>
                {
                    last.delete = length as u64;
                }
                _ => out.push(SpliceEdit {
                    pos: index as u64,
                    delete: length as u64,
                    insert: String::new(),
                }),
            },
            PatchAction::Mark { .. } => {}
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
