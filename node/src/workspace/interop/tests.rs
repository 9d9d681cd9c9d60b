//! Foreign Automerge documents replayed as the importer's changes, and
//! exported documents loaded back, all in memory.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, ObjType, ROOT, ReadDoc};

use super::*;
use crate::workspace::tests::{LIMIT, author, new_ws, path};

fn limits() -> ImportLimits {
    ImportLimits::for_text(LIMIT)
}

/// A document by another application: two actors take turns on `field`,
/// with messages and times; returns it and the text after each change.
fn foreign(field: &str) -> (AutoCommit, Vec<String>) {
    let mut a = AutoCommit::new().with_actor(ActorId::from(&[0xaa; 16][..]));
    let text = a.put_object(ROOT, field, ObjType::Text).expect("text");
    a.put(ROOT, "title", "Notes").expect("title");
    a.commit_with(CommitOptions::default().with_time(1_600_000_000));
    let mut texts = vec![String::new()];
    let steps: [(usize, usize, isize, &str); 5] = [
        (0, 0, 0, "Hello world"),
        (1, 5, 6, ", Automerge"),
        (0, 0, 0, "# "),
        (1, 2, 0, "Big "),
        (0, 6, 1, "ö🙂"),
    ];
    let mut b = a.fork().with_actor(ActorId::from(&[0xbb; 16][..]));
    for (i, (who, pos, del, ins)) in steps.into_iter().enumerate() {
        let (me, other) = if who == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        me.merge(other).expect("merge");
        me.splice_text(&text, pos, del, ins).expect("splice");
        me.commit_with(
            CommitOptions::default()
                .with_time(1_600_000_100 + i as i64)
                .with_message(format!("step {i}\nsecond line")),
        );
        texts.push(me.text(&text).expect("text"));
        other.merge(me).expect("merge");
    }
    (a, texts)
}

#[test]
fn a_foreign_history_is_replayed_version_by_version_as_the_importers_changes() {
    let (mut am, texts) = foreign("text");
    let foreign = read(&am.save(), "text", limits()).expect("read");
    assert_eq!(foreign.text, *texts.last().expect("texts"));
    assert_eq!(foreign.actors, 2);
    assert_eq!(foreign.changes, 6, "the first change only makes the object");
    assert_eq!(
        foreign.versions.len(),
        5,
        "one per change that touched the text"
    );
    let mut ws = new_ws();
    let me = author(1);
    let p = path("notes.md");
    let (info, changes) = ws
        .import_file(&p, &foreign, &me, 1_700_000_000_000, [3; 16])
        .expect("import");
    assert_eq!(info.chars, Some(foreign.text.chars().count() as u64));
    assert_eq!(
        ws.get_file(&p).expect("file").bytes,
        foreign.text.as_bytes()
    );
    let file_changes: Vec<_> = changes.iter().filter(|c| c.doc != ws.index.id).collect();
    assert_eq!(file_changes.len(), 5);
    for (i, c) in file_changes.iter().enumerate() {
        assert_eq!(c.change.actor_id(), &me.actor, "the importer's own actor");
        assert_eq!(
            c.change.timestamp(),
            1_600_000_100 + i as i64,
            "the author's time"
        );
        let msg = c.change.message().expect("message");
        assert!(
            xencode_protocol::envelope::decode_citation(Some(msg)).is_some(),
            "still cites the access heads: {msg}"
        );
        let who = if i % 2 == 0 { "aa" } else { "bb" };
        assert!(
            msg.contains(&format!("imported from {}", who.repeat(16))),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("step {i} second line")),
            "one line: {msg}"
        );
    }
    // Every version of the exported file is the foreign text at that point.
    let exported = ws.export_file(&p).expect("export");
    let mut back = AutoCommit::load(&exported).expect("loads");
    let text = match back.get(ROOT, "text").expect("get") {
        Some((automerge::Value::Object(ObjType::Text), id)) => id,
        other => panic!("no text: {other:?}"),
    };
    let mut seen = Vec::new();
    for change in back.get_changes(&[]) {
        let heads = [change.hash()];
        if let Ok(t) = back.text_at(&text, &heads)
            && seen.last() != Some(&t)
        {
            seen.push(t);
        }
    }
    assert_eq!(seen, texts[1..], "the whole history, in order");
}

#[test]
fn concurrent_foreign_edits_and_string_fields_import_to_the_merged_text() {
    let mut a = AutoCommit::new();
    let text = a.put_object(ROOT, "body", ObjType::Text).expect("text");
    a.splice_text(&text, 0, 0, "base text").expect("splice");
    a.commit();
    let mut b = a.fork();
    a.splice_text(&text, 0, 0, "A: ").expect("splice");
    a.commit();
    b.splice_text(&text, 9, 0, " :B").expect("splice");
    b.commit();
    a.merge(&mut b).expect("merge");
    let merged = a.text(&text).expect("text");
    let f = read(&a.save(), "body", limits()).expect("read");
    assert_eq!(f.text, merged);
    let mut ws = new_ws();
    let p = path("body.txt");
    ws.import_file(&p, &f, &author(1), 1_700_000_000_000, [4; 16])
        .expect("import");
    assert_eq!(ws.get_file(&p).expect("file").bytes, merged.as_bytes());

    // A plain string, replaced whole, is compared version to version.
    let mut s = AutoCommit::new();
    for v in ["one", "one two", "zero one two"] {
        s.put(ROOT, "text", v).expect("put");
        s.commit();
    }
    let f = read(&s.save(), "text", limits()).expect("read");
    assert_eq!(f.versions.len(), 3);
    assert_eq!(f.versions[2].edits.len(), 1, "a splice, not a rewrite");
    assert_eq!(f.text, "zero one two");
}

#[test]
fn what_cannot_be_imported_is_refused_with_what_to_do() {
    let (mut am, _) = foreign("content");
    let saved = am.save();
    match read(&saved, "text", limits()) {
        Err(ImportError::NoText { found, .. }) => {
            assert_eq!(found, "content (text), title (string)");
        }
        other => panic!("{other:?}"),
    }
    assert!(read(&saved, "content", limits()).is_ok());
    let tiny = ImportLimits {
        max_text_bytes: 10,
        ..limits()
    };
    let e = read(&saved, "content", tiny).expect_err("too long");
    assert!(e.to_string().contains("store.max_text_bytes"), "{e}");
    let few = ImportLimits {
        max_changes: 3,
        ..limits()
    };
    assert_eq!(
        read(&saved, "content", few),
        Err(ImportError::TooManyChanges { changes: 6, max: 3 })
    );
    assert!(matches!(
        read(b"not automerge", "text", limits()),
        Err(ImportError::Chunks(_))
    ));
    assert!(read(&saved[..saved.len() - 3], "content", limits()).is_err());
    let mut flipped = saved.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    assert!(
        read(&flipped, "content", limits()).is_err(),
        "the checksum or the content"
    );

    let mut ws = new_ws();
    let p = path("taken.md");
    ws.put_file(&p, b"mine", &author(1), 1, [5; 16], LIMIT)
        .expect("put");
    let f = read(&saved, "content", limits()).expect("read");
    assert_eq!(
        ws.import_file(&p, &f, &author(1), 2, [6; 16]).map(|_| ()),
        Err(WorkspaceError::FileExists(p.clone()))
    );
    assert_eq!(ws.get_file(&p).expect("file").bytes, b"mine", "untouched");

    // Edits that do not fit are refused before anything is made.
    let mut bad = f.clone();
    bad.versions[1].edits[0].pos = 10_000;
    let q = path("bad.md");
    assert!(matches!(
        ws.import_file(&q, &bad, &author(1), 2, [7; 16]),
        Err(WorkspaceError::OutOfRange { .. })
    ));
    assert!(ws.get_file(&q).is_err(), "no half-made file");
}

#[test]
fn a_long_history_is_grouped_into_at_most_max_versions() {
    let mut am = AutoCommit::new();
    let text = am.put_object(ROOT, "text", ObjType::Text).expect("text");
    for i in 0..100 {
        am.splice_text(&text, i, 0, "x").expect("splice");
        am.commit();
    }
    let few = ImportLimits {
        max_versions: 7,
        ..limits()
    };
    let f = read(&am.save(), "text", few).expect("read");
    assert!(f.versions.len() <= 7, "{}", f.versions.len());
    assert!(
        f.versions[1].note.starts_with("imported 15 changes"),
        "{}",
        f.versions[1].note
    );
    let mut ws = new_ws();
    let p = path("x.txt");
    ws.import_file(&p, &f, &author(1), 1_700_000_000_000, [7; 16])
        .expect("import");
    assert_eq!(
        ws.get_file(&p).expect("file").bytes,
        "x".repeat(100).as_bytes()
    );
}
