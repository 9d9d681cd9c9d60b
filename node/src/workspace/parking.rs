//! A workspace's file documents within a memory budget.
//!
//! An Automerge document costs about 20 KB of heap however little it holds
//! (its column buffers), so a workspace of 10,000 small files held 200 MB
//! of documents nobody was using. Here the most recently used file
//! documents stay loaded and the others are *parked*: kept as their saved
//! bytes (Automerge's compressed form, about the size of the text), with
//! their heads and what a file listing shows, and loaded again when a
//! caller asks for them. Parking is invisible to callers: [`FileDocs::get_mut`]
//! hands out a loaded document whatever state it was in.
//!
//! A document is parked as the snapshot the store's compaction verified
//! for it (`Persistence::compact` calls [`FileDocs::snapshot`]): parking
//! costs no save of its own, and no load to check one (0.7 ms for a 2 KB
//! text document in Automerge 0.12). A loaded document with no snapshot
//! at its heads waits for the next compaction, which the store runs when
//! idle or once records pile up, so the documents loaded beyond the budget
//! are bounded by the store's compaction threshold.
//!
//! Invariants:
//! - a document is parked only as a snapshot that loaded back with its
//!   current heads (crafted changes can make a document whose saved form
//!   does not load: it stays loaded), and only with no uncommitted
//!   operations;
//! - parking happens only inside `&mut self` calls ([`FileDocs::get_mut`],
//!   the inserts, [`FileDocs::make_room`]), so no reference to a document
//!   is ever held across a parking (the borrow checker sees to it);
//! - what does not need a document's history — its heads, its listing —
//!   is answered without loading it.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ChangeHash};
use xencode_protocol::DocId;
use xencode_protocol::api::FileKind;

use super::Doc;

/// File documents kept loaded per workspace (about 20–30 KB each when
/// small); the rest are parked. Enough for a burst or an import batch.
pub const LOADED_FILE_DOCS: usize = 1024;

/// Learned facts kept until the store takes them.
const LEARNED_MAX: usize = 1 << 16;

/// What a file listing shows of a file, kept while its document is parked
/// (and stored beside its snapshot).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Facts {
    pub kind: FileKind,
    pub size_bytes: u64,
    pub chars: Option<u64>,
    pub updated_by: String,
    pub updated_at: u64,
}

#[derive(Debug, Clone)]
enum Slot {
    Loaded {
        doc: Box<Doc>,
        used: u64,
        /// What it was parked as: parked again as is if its heads have not
        /// moved (a read costs one load, not a save).
        was: Option<Box<Parked>>,
    },
    Parked(Box<Parked>),
}

#[derive(Debug, Clone)]
struct Parked {
    saved: Vec<u8>,
    heads: Vec<ChangeHash>,
    actor: ActorId,
    /// Unknown for a document parked from the store at start, until it is
    /// first loaded.
    facts: Option<Facts>,
}

/// The file documents of one workspace, by id.
#[derive(Debug, Clone)]
pub struct FileDocs {
    slots: BTreeMap<DocId, Slot>,
    /// Loaded documents that may be parked, by when they were last used
    /// (oldest first).
    recency: BTreeMap<u64, DocId>,
    clock: u64,
    budget: usize,
    /// How many slots are loaded.
    loaded: usize,
    /// Facts learned by loading documents parked without them, for the
    /// store to keep (so the next start lists them without loading).
    learned: Vec<(DocId, Facts)>,
}

impl Default for FileDocs {
    fn default() -> Self {
        Self::with_budget(LOADED_FILE_DOCS)
    }
}

impl FileDocs {
    /// Keeps at most `budget` documents loaded (beyond those that cannot be
    /// parked).
    pub fn with_budget(budget: usize) -> Self {
        Self {
            slots: BTreeMap::new(),
            recency: BTreeMap::new(),
            clock: 0,
            budget,
            loaded: 0,
            learned: Vec::new(),
        }
    }

    /// Keeps at most `budget` loaded from now on (parking the excess at the
    /// next use).
    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// How many are loaded now.
    pub fn loaded(&self) -> usize {
        self.loaded
    }

    pub fn contains_key(&self, id: &DocId) -> bool {
        self.slots.contains_key(id)
    }

    pub fn keys(&self) -> impl Iterator<Item = &DocId> {
        self.slots.keys()
    }

    pub fn into_keys(self) -> impl Iterator<Item = DocId> {
        self.slots.into_keys()
    }

    /// The document, loaded if it was parked (`None` if there is no such
    /// document, or its parked form no longer loads, which is logged).
    pub fn get_mut(&mut self, id: &DocId) -> Option<&mut Doc> {
        let now = self.tick();
        let slot = self.slots.get_mut(id)?;
        match slot {
            Slot::Loaded { used, .. } => {
                self.recency.remove(used);
                *used = now;
            }
            Slot::Parked(_) => {
                unpark(slot, *id, now)?;
                self.loaded += 1;
            }
        }
        self.recency.insert(now, *id);
        self.make_room();
        match self.slots.get_mut(id) {
            Some(Slot::Loaded { doc, .. }) => Some(doc),
            _ => None,
        }
    }

    /// The document, made empty (written by `actor`) if there is none.
    pub fn get_or_new(&mut self, id: DocId, actor: &ActorId) -> Option<&mut Doc> {
        if !self.contains_key(&id) {
            self.insert(Doc::new(id, actor));
        }
        self.get_mut(&id)
    }

    /// Adds a loaded document (replacing any of the same id).
    pub fn insert(&mut self, doc: Doc) {
        let id = doc.id;
        let now = self.tick();
        let replaced = self.slots.insert(
            id,
            Slot::Loaded {
                doc: Box::new(doc),
                used: now,
                was: None,
            },
        );
        self.forget(replaced);
        self.loaded += 1;
        self.recency.insert(now, id);
        self.make_room();
    }

    /// Adds a document as its saved bytes, which must be a snapshot that
    /// loads with `heads` (as the store writes them), with its `facts` if
    /// they are known.
    pub fn insert_parked(
        &mut self,
        id: DocId,
        saved: Vec<u8>,
        heads: Vec<ChangeHash>,
        actor: ActorId,
        facts: Option<Facts>,
    ) {
        let replaced = self.slots.insert(
            id,
            Slot::Parked(Box::new(Parked {
                saved,
                heads,
                actor,
                facts,
            })),
        );
        self.forget(replaced);
    }

    /// Drops a replaced slot from the counts.
    fn forget(&mut self, replaced: Option<Slot>) {
        if let Some(Slot::Loaded { used, .. }) = replaced {
            self.recency.remove(&used);
            self.loaded -= 1;
        }
    }

    /// The document's heads (committed: reading them never commits), without
    /// loading it.
    pub fn heads(&mut self, id: &DocId) -> Option<Vec<ChangeHash>> {
        match self.slots.get_mut(id)? {
            Slot::Loaded { doc, .. } => Some(doc.am.base_heads()),
            Slot::Parked(p) => Some(p.heads.clone()),
        }
    }

    /// What a listing shows of the file, loading its document only if it
    /// was parked before anything was known of it.
    pub fn facts(&mut self, id: &DocId) -> Option<Facts> {
        let unknown = match self.slots.get(id)? {
            Slot::Parked(p) => match &p.facts {
                Some(f) => return Some(f.clone()),
                None => true,
            },
            Slot::Loaded { .. } => false,
        };
        let facts = facts_of(&self.get_mut(id)?.am);
        if unknown && self.learned.len() < LEARNED_MAX {
            self.learned.push((*id, facts.clone()));
        }
        Some(facts)
    }

    /// Facts learned since the last call, by loading documents parked
    /// without them.
    pub fn take_learned(&mut self) -> Vec<(DocId, Facts)> {
        std::mem::take(&mut self.learned)
    }

    /// A snapshot of the document that loads back (`None` if there is no
    /// such document, `Some(None)` if its saved form does not load back).
    /// Kept as its parked form: one verified save serves both the store's
    /// compaction and parking, whichever comes first.
    pub fn snapshot(&mut self, id: &DocId) -> Option<Option<Vec<u8>>> {
        match self.slots.get_mut(id)? {
            Slot::Parked(p) => Some(Some(p.saved.clone())),
            Slot::Loaded { doc, was, used } => {
                let heads = doc.am.get_heads();
                if let Some(p) = was.as_ref().filter(|p| p.heads == heads) {
                    return Some(Some(p.saved.clone()));
                }
                let saved = verified_snapshot(&mut doc.am);
                if let Some(saved) = &saved {
                    *was = Some(Box::new(Parked {
                        saved: saved.clone(),
                        heads,
                        actor: doc.am.get_actor().clone(),
                        facts: None,
                    }));
                    // Parkable now: back in the queue, in its place.
                    self.recency.insert(*used, *id);
                }
                Some(saved)
            }
        }
    }

    /// `saved` (a verified saved form: a checked chunk a peer sent, which
    /// the store now keeps as the document's snapshot) is what the loaded
    /// document parks as while its heads are still the ones saved.
    pub fn adopt_snapshot(&mut self, id: &DocId, saved: &[u8]) {
        let Some(heads) = saved_heads(saved) else {
            return;
        };
        if let Some(Slot::Loaded { doc, was, used }) = self.slots.get_mut(id) {
            *was = Some(Box::new(Parked {
                saved: saved.to_vec(),
                heads,
                actor: doc.am.get_actor().clone(),
                facts: None,
            }));
            self.recency.insert(*used, *id);
        }
    }

    /// What a listing shows of the file, if known without loading it (for
    /// the store to keep beside the snapshot).
    pub fn known_facts(&self, id: &DocId) -> Option<Facts> {
        match self.slots.get(id)? {
            Slot::Loaded { doc, .. } => Some(facts_of(&doc.am)),
            Slot::Parked(p) => p.facts.clone(),
        }
    }

    /// The saved bytes of a parked document (a verified snapshot).
    pub fn parked_bytes(&self, id: &DocId) -> Option<&[u8]> {
        match self.slots.get(id)? {
            Slot::Parked(p) => Some(&p.saved),
            Slot::Loaded { .. } => None,
        }
    }

    /// Every document, all loaded (for tests and the fuzz harness: the
    /// next [`Self::get_mut`] parks the excess again).
    pub fn all_mut(&mut self) -> impl Iterator<Item = &mut Doc> {
        let now = self.tick();
        for (id, slot) in &mut self.slots {
            // One that no longer loads stays parked (and is logged).
            if matches!(slot, Slot::Parked(_)) && unpark(slot, *id, now).is_some() {
                self.loaded += 1;
            }
        }
        self.slots.values_mut().filter_map(|s| match s {
            Slot::Loaded { doc, .. } => Some(&mut **doc),
            Slot::Parked(_) => None,
        })
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Parks the least recently used documents beyond the budget (those
    /// with a snapshot at their heads).
    pub fn make_room(&mut self) {
        while self.recency.len() > self.budget {
            let Some((_, id)) = self.recency.pop_first() else {
                return;
            };
            let Some(slot) = self.slots.get_mut(&id) else {
                continue;
            };
            let Slot::Loaded { doc, was, .. } = slot else {
                continue;
            };
            // One without a snapshot at its heads stays loaded, out of the
            // queue until it is used again or snapshotted.
            if let Some(p) = park(doc, was) {
                *slot = Slot::Parked(p);
                self.loaded -= 1;
            }
        }
    }
}

impl Parked {
    fn load(&self, id: DocId) -> Option<Box<Doc>> {
        match std::panic::catch_unwind(|| AutoCommit::load(&self.saved)) {
            Ok(Ok(mut am)) => {
                am.set_actor(self.actor.clone());
                Some(Box::new(Doc { id, am }))
            }
            Ok(Err(e)) => {
                tracing::error!(doc = %id, error = %e, "a parked document does not load");
                None
            }
            Err(_) => {
                tracing::error!(doc = %id, "a parked document does not load (Automerge panicked)");
                None
            }
        }
    }
}

/// Loads a parked slot in place (`None` if it is not parked, or does not
/// load).
fn unpark(slot: &mut Slot, id: DocId, now: u64) -> Option<()> {
    let Slot::Parked(p) = slot else {
        return None;
    };
    let doc = p.load(id)?;
    let loaded = Slot::Loaded {
        doc,
        used: now,
        was: None,
    };
    if let Slot::Parked(p) = std::mem::replace(slot, loaded)
        && let Slot::Loaded { was, .. } = slot
    {
        *was = Some(p);
    }
    Some(())
}

/// The parked form of `doc`: its snapshot `was` (taken), if that is at its
/// heads and it has no uncommitted operations.
fn park(doc: &mut Doc, was: &mut Option<Box<Parked>>) -> Option<Box<Parked>> {
    if doc.am.pending_ops() > 0 {
        return None;
    }
    let heads = doc.am.get_heads();
    let mut p = was.take_if(|p| p.heads == heads)?;
    if p.facts.is_none() {
        p.facts = Some(facts_of(&doc.am));
    }
    Some(p)
}

/// The document saved, if the saved form loads back with the same heads.
/// Crafted changes a member sent (found by fuzzing) can leave a document
/// whose saved form no longer loads: parking it, or writing it in place of
/// its change records, would lose it.
pub fn verified_snapshot(am: &mut AutoCommit) -> Option<Vec<u8>> {
    let heads = am.get_heads();
    let saved = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| am.save())).ok()?;
    let loaded = std::panic::catch_unwind(|| AutoCommit::load(&saved).map(|mut d| d.get_heads()));
    matches!(loaded, Ok(Ok(h)) if h == heads).then_some(saved)
}

/// What a listing shows of a file document.
pub fn facts_of(am: &AutoCommit) -> Facts {
    use super::{get_bytes, get_str, get_text_obj, get_u64};
    use automerge::{ROOT, ReadDoc};
    let (kind, size_bytes, chars) = match get_text_obj(am) {
        Some(t) => {
            let s = am.text(&t).unwrap_or_default();
            (FileKind::Text, s.len() as u64, Some(am.length(&t) as u64))
        }
        None => (
            FileKind::Binary,
            get_bytes(am, &ROOT, "data").map_or(0, |b| b.len() as u64),
            None,
        ),
    };
    Facts {
        kind,
        size_bytes,
        chars,
        updated_by: get_str(am, &ROOT, "updated_by").unwrap_or_default(),
        updated_at: get_u64(am, &ROOT, "updated_at").unwrap_or(0),
    }
}

/// The heads recorded in a saved Automerge document (the header of its
/// document chunk: actors, then heads), without loading it; `None` if the
/// bytes do not start with one document chunk.
pub fn saved_heads(bytes: &[u8]) -> Option<Vec<ChangeHash>> {
    const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != MAGIC {
        return None;
    }
    r.take(4)?; // checksum
    if r.take(1)? != [0] {
        return None; // not a document chunk
    }
    let len = usize::try_from(r.uleb()?).ok()?;
    let mut r = Reader {
        bytes: r.take(len)?,
        at: 0,
    };
    let actors = r.uleb()?;
    for _ in 0..actors {
        let n = usize::try_from(r.uleb()?).ok()?;
        r.take(n)?;
    }
    let count = usize::try_from(r.uleb()?).ok()?;
    if count > r.bytes.len() / 32 {
        return None;
    }
    let mut heads = Vec::with_capacity(count);
    for _ in 0..count {
        heads.push(ChangeHash(r.take(32)?.try_into().ok()?));
    }
    Some(heads)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    fn uleb(&mut self) -> Option<u64> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self.take(1)?.first()?;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(out);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
