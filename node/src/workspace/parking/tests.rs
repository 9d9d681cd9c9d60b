//! The parking of file documents: budget, recency, snapshots, the heads
//! read from a saved document's header.

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};

use super::*;

fn id(n: u8) -> DocId {
    DocId::from_bytes([n; 16])
}

fn actor(n: u8) -> ActorId {
    ActorId::from([n; 16])
}

/// A file document holding `text`, committed.
fn text_doc(n: u8, text: &str) -> Doc {
    let mut doc = Doc::new(id(n), &actor(1));
    let t = doc
        .am
        .put_object(ROOT, "text", ObjType::Text)
        .expect("text");
    doc.am.splice_text(&t, 0, 0, text).expect("splice");
    doc.am.put(ROOT, "updated_at", 7u64).expect("put");
    doc.am.commit();
    doc
}

/// Inserts `doc` and snapshots it, as the store's compaction does: it may
/// be parked from then on.
fn insert_snapshotted(docs: &mut FileDocs, doc: Doc) {
    let id = doc.id;
    docs.insert(doc);
    assert!(docs.snapshot(&id).expect("held").is_some(), "loads back");
    docs.make_room();
}

fn text_of(doc: &Doc) -> String {
    let (_, t) = doc.am.get(ROOT, "text").expect("get").expect("text");
    doc.am.text(&t).expect("text")
}

#[test]
fn saved_heads_are_read_from_the_header_without_loading() {
    let mut empty = AutoCommit::new();
    assert_eq!(saved_heads(&empty.save()), Some(Vec::new()));
    let mut a = text_doc(1, "hello").am;
    let mut b = a.fork().with_actor(actor(2));
    let ta = a.get(ROOT, "text").expect("get").expect("text").1;
    a.splice_text(&ta, 0, 0, "a").expect("splice");
    let tb = b.get(ROOT, "text").expect("get").expect("text").1;
    b.splice_text(&tb, 5, 0, "b").expect("splice");
    a.merge(&mut b).expect("merge");
    let mut heads = a.get_heads();
    assert_eq!(heads.len(), 2, "concurrent heads");
    let mut read = saved_heads(&a.save()).expect("parsed");
    heads.sort();
    read.sort();
    assert_eq!(read, heads);
    // Anything else is refused, never misread.
    assert_eq!(saved_heads(b"not automerge"), None);
    assert_eq!(saved_heads(&a.save()[..20]), None);
    let change = a
        .get_last_local_change()
        .expect("change")
        .raw_bytes()
        .to_vec();
    assert_eq!(
        saved_heads(&change),
        None,
        "a change chunk is not a document"
    );
}

#[test]
fn documents_beyond_the_budget_are_parked_and_come_back_whole() {
    let mut docs = FileDocs::with_budget(2);
    for n in 0..5 {
        insert_snapshotted(&mut docs, text_doc(n, &format!("file {n}")));
    }
    assert_eq!(docs.len(), 5);
    assert_eq!(docs.loaded(), 2, "only the budget stays loaded");
    // A parked document answers its heads and listing without loading.
    let parked = id(0);
    assert!(docs.parked_bytes(&parked).is_some());
    let heads = docs.heads(&parked).expect("heads");
    let facts = docs.facts(&parked).expect("facts");
    assert!(docs.parked_bytes(&parked).is_some(), "still parked");
    assert_eq!(facts.chars, Some(6));
    assert_eq!(facts.updated_at, 7);
    // Loaded again: same text, same heads, same actor for new changes.
    let doc = docs.get_mut(&parked).expect("loads");
    assert_eq!(text_of(doc), "file 0");
    assert_eq!(doc.am.get_heads(), heads);
    assert_eq!(doc.am.get_actor(), &actor(1));
    assert_eq!(docs.loaded(), 2, "loading one parked another");
    // Every document is still there, whichever state it is in.
    for n in 0..5 {
        let doc = docs.get_mut(&id(n)).expect("held");
        assert_eq!(text_of(doc), format!("file {n}"));
    }
}

#[test]
fn the_least_recently_used_is_parked_first() {
    let mut docs = FileDocs::with_budget(2);
    insert_snapshotted(&mut docs, text_doc(0, "a"));
    insert_snapshotted(&mut docs, text_doc(1, "b"));
    docs.get_mut(&id(0)).expect("held");
    insert_snapshotted(&mut docs, text_doc(2, "c"));
    assert!(
        docs.parked_bytes(&id(1)).is_some(),
        "1 was used least recently"
    );
    assert!(docs.parked_bytes(&id(0)).is_none());
    assert!(docs.parked_bytes(&id(2)).is_none());
}

#[test]
fn a_document_with_uncommitted_operations_is_never_parked() {
    let mut docs = FileDocs::with_budget(1);
    let open = text_doc(0, "x");
    docs.insert(open);
    docs.snapshot(&id(0)).expect("held");
    docs.get_mut(&id(0))
        .expect("held")
        .am
        .put(ROOT, "note", "uncommitted")
        .expect("put");
    insert_snapshotted(&mut docs, text_doc(1, "y"));
    assert!(
        docs.parked_bytes(&id(0)).is_none(),
        "parking would have committed it unsigned"
    );
    assert_eq!(docs.loaded(), 2);
}

#[test]
fn a_document_parked_from_a_snapshot_is_loaded_on_first_use() {
    let mut docs = FileDocs::with_budget(4);
    let mut doc = text_doc(3, "from the store");
    let saved = doc.am.save();
    let heads = saved_heads(&saved).expect("heads");
    docs.insert_parked(id(3), saved, heads.clone(), actor(9), None);
    assert_eq!(docs.loaded(), 0);
    assert_eq!(docs.heads(&id(3)), Some(heads));
    let facts = docs.facts(&id(3)).expect("loaded for its facts");
    assert_eq!(facts.size_bytes, 14);
    let doc = docs.get_mut(&id(3)).expect("loaded");
    assert_eq!(doc.am.get_actor(), &actor(9), "the node's actor");
}

#[test]
fn a_document_only_read_is_parked_as_it_was_and_a_changed_one_waits_for_a_snapshot() {
    let mut docs = FileDocs::with_budget(1);
    insert_snapshotted(&mut docs, text_doc(0, "a"));
    insert_snapshotted(&mut docs, text_doc(1, "b"));
    let before = docs.parked_bytes(&id(0)).expect("parked").as_ptr();
    docs.get_mut(&id(0)).expect("loads");
    docs.get_mut(&id(1)).expect("loads");
    let again = docs.parked_bytes(&id(0)).expect("parked again");
    assert_eq!(again.as_ptr(), before, "the same bytes, not saved again");
    // Changed: parked only once snapshotted at its new heads.
    let doc = docs.get_mut(&id(0)).expect("loads");
    let (_, t) = doc.am.get(ROOT, "text").expect("get").expect("text");
    doc.am.splice_text(&t, 0, 0, "z").expect("splice");
    doc.am.commit();
    let heads = doc.am.get_heads();
    docs.get_mut(&id(1)).expect("loads");
    assert!(
        docs.parked_bytes(&id(0)).is_none(),
        "no snapshot at its heads yet"
    );
    assert_eq!(
        docs.loaded(),
        2,
        "over the budget until the next compaction"
    );
    docs.snapshot(&id(0)).expect("held").expect("loads back");
    docs.make_room();
    assert_eq!(docs.loaded(), 1);
    assert_eq!(docs.heads(&id(0)), Some(heads), "parked at its new heads");
    assert_eq!(text_of(docs.get_mut(&id(0)).expect("loads")), "za");
}

#[test]
fn one_verified_save_serves_both_the_store_and_parking() {
    let mut docs = FileDocs::with_budget(1);
    docs.insert(text_doc(0, "a"));
    docs.insert(text_doc(1, "b"));
    assert_eq!(docs.loaded(), 2, "nothing parks without a snapshot");
    let snapshot = docs.snapshot(&id(0)).expect("held").expect("loads back");
    docs.make_room();
    assert_eq!(
        docs.parked_bytes(&id(0)),
        Some(snapshot.as_slice()),
        "parked as the store's snapshot, not saved again"
    );
    assert_eq!(docs.snapshot(&id(0)), Some(Some(snapshot)));
    assert_eq!(docs.snapshot(&id(7)), None);
}
