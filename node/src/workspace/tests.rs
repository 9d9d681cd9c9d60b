//! The workspace schema's operations in memory: files, splices, members,
//! revocations, analyses; validation before mutation.

use super::*;
use xencode_protocol::api::SpliceEdit;

pub(super) fn author(n: u8) -> Author {
    Author {
        peer_id: format!("peer-{n}"),
        public_key: [n; 32],
        actor: ActorId::from(xencode_protocol::ids::actor_id(&[n; 32], 0).as_slice()),
    }
}

pub(super) const LIMIT: usize = 1 << 20;

pub(super) fn path(p: &str) -> WorkspacePath {
    WorkspacePath::parse(p).expect("valid path")
}

pub(super) fn edit(pos: u64, delete: u64, insert: &str) -> SpliceEdit {
    SpliceEdit {
        pos,
        delete,
        insert: insert.into(),
    }
}

pub(super) fn new_ws() -> Workspace {
    let (ws, changes) = Workspace::create(
        WorkspaceId::from_bytes([9; 16]),
        &[0; 16],
        "team",
        &author(1),
        1_000,
    )
    .expect("create");
    assert_eq!(changes.len(), 2, "access and index each get one change");
    ws
}

#[test]
fn creator_is_the_admin_member_and_owner() {
    let ws = new_ws();
    let summary = ws.summary("peer-1", 0);
    assert_eq!(summary.name, "team");
    assert_eq!(summary.owner, "peer-1");
    assert_eq!(summary.role, Role::Admin);
    let members = ws.members();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].role, Role::Admin);
    assert_eq!(ws.summary("someone-else", 0).role, Role::Viewer);
}

/// The summary says whether a membership holds now: a revoked or expired
/// member keeps its recorded role but has no effective one.
#[test]
fn a_revoked_or_expired_member_has_no_effective_role() {
    use xencode_protocol::api::Standing;
    let mut ws = new_ws();
    let root = author(1);
    ws.add_member("peer-2", Role::Developer, "t2", None, &root, 2_000)
        .expect("add");
    ws.add_member("peer-3", Role::Viewer, "t3", Some(10_000), &root, 2_000)
        .expect("add");
    let dev = ws.summary("peer-2", 3_000);
    assert_eq!(
        (dev.standing, dev.effective_role, dev.role),
        (Standing::Member, Some(Role::Developer), Role::Developer)
    );
    ws.revoke("peer-2", &root, 4_000).expect("revoke");
    let dev = ws.summary("peer-2", 5_000);
    assert_eq!(
        (dev.standing, dev.effective_role, dev.role),
        (Standing::Revoked, None, Role::Developer)
    );
    let viewer = ws.summary("peer-3", 9_000);
    assert_eq!(viewer.standing, Standing::Member);
    let viewer = ws.summary("peer-3", 11_000);
    assert_eq!(
        (viewer.standing, viewer.effective_role),
        (Standing::Expired, None)
    );
    let stranger = ws.summary("peer-9", 5_000);
    assert_eq!(
        (stranger.standing, stranger.effective_role),
        (Standing::NotMember, None)
    );
}

#[test]
fn text_and_binary_files_round_trip_exactly() {
    let mut ws = new_ws();
    let a = author(1);
    let (info, changes) = ws
        .put_file(
            &path("src/main.py"),
            "print('hé')\n".as_bytes(),
            &a,
            2_000,
            [1; 16],
            LIMIT,
        )
        .expect("put text");
    assert_eq!(info.kind, FileKind::Text);
    assert_eq!(info.chars, Some(12));
    assert_eq!(changes.len(), 2, "index entry and file content");
    let binary = [0u8, 159, 146, 150, 255];
    ws.put_file(&path("logo.png"), &binary, &a, 2_000, [2; 16], LIMIT)
        .expect("put binary");
    assert_eq!(
        ws.get_file(&path("src/main.py")).expect("get").bytes,
        "print('hé')\n".as_bytes()
    );
    let got = ws.get_file(&path("logo.png")).expect("get");
    assert_eq!(
        (got.kind, got.bytes.as_slice()),
        (FileKind::Binary, &binary[..])
    );
    let listed: Vec<_> = ws
        .list_files()
        .into_iter()
        .map(|f| f.path.to_string())
        .collect();
    assert_eq!(listed, ["logo.png", "src/main.py"]);
}

#[test]
fn rewriting_identical_content_makes_no_change() {
    let mut ws = new_ws();
    let a = author(1);
    ws.put_file(&path("a.txt"), b"same", &a, 1, [1; 16], LIMIT)
        .expect("put");
    let (_, changes) = ws
        .put_file(&path("a.txt"), b"same", &a, 2, [2; 16], LIMIT)
        .expect("put");
    assert!(changes.is_empty());
    let (_, changes) = ws
        .put_file(&path("a.txt"), b"", &a, 3, [3; 16], LIMIT)
        .expect("put");
    assert_eq!(changes.len(), 1);
    assert_eq!(ws.get_file(&path("a.txt")).expect("get").bytes, b"");
}

#[test]
fn a_file_can_switch_between_text_and_binary() {
    let mut ws = new_ws();
    let a = author(1);
    ws.put_file(&path("f"), b"text", &a, 1, [1; 16], LIMIT)
        .expect("put");
    ws.put_file(&path("f"), &[0xff, 0x00], &a, 2, [1; 16], LIMIT)
        .expect("put");
    assert_eq!(ws.get_file(&path("f")).expect("get").kind, FileKind::Binary);
    ws.put_file(&path("f"), b"again", &a, 3, [1; 16], LIMIT)
        .expect("put");
    let got = ws.get_file(&path("f")).expect("get");
    assert_eq!((got.kind, got.bytes), (FileKind::Text, b"again".to_vec()));
}

#[test]
fn splices_count_unicode_scalar_values() {
    let mut ws = new_ws();
    let a = author(1);
    ws.put_file(&path("t.md"), "añb😀c".as_bytes(), &a, 1, [1; 16], LIMIT)
        .expect("put");
    let (len, _, changes) = ws
        .splice(&path("t.md"), &[edit(4, 1, "C"), edit(1, 1, "n")], &a, 2)
        .expect("splice");
    assert_eq!(len, 5);
    assert_eq!(changes.len(), 1, "a batch is one change");
    assert_eq!(
        ws.get_file(&path("t.md")).expect("get").bytes,
        "anb😀C".as_bytes()
    );
}

#[test]
fn an_out_of_range_batch_changes_nothing() {
    let mut ws = new_ws();
    let a = author(1);
    ws.put_file(&path("t"), b"abc", &a, 1, [1; 16], LIMIT)
        .expect("put");
    let before = ws.detail("peer-1", 0).heads;
    let err = ws
        .splice(&path("t"), &[edit(0, 0, "xx"), edit(5, 1, "")], &a, 2)
        .expect_err("second edit is past the end");
    assert_eq!(
        err,
        WorkspaceError::OutOfRange {
            edit: 1,
            pos: 5,
            delete: 1,
            len: 5
        }
    );
    let err = ws
        .splice(&path("t"), &[edit(u64::MAX, u64::MAX, "")], &a, 2)
        .expect_err("overflow");
    assert!(matches!(err, WorkspaceError::OutOfRange { .. }));
    assert_eq!(ws.detail("peer-1", 0).heads, before);
    assert_eq!(ws.get_file(&path("t")).expect("get").bytes, b"abc");
}

#[test]
fn splicing_a_binary_or_missing_file_is_refused() {
    let mut ws = new_ws();
    let a = author(1);
    ws.put_file(&path("b"), &[0xff], &a, 1, [1; 16], LIMIT)
        .expect("put");
    assert!(matches!(
        ws.splice(&path("b"), &[edit(0, 0, "x")], &a, 2),
        Err(WorkspaceError::NotText(_))
    ));
    assert!(matches!(
        ws.splice(&path("nope"), &[edit(0, 0, "x")], &a, 2),
        Err(WorkspaceError::FileNotFound(_))
    ));
    ws.remove_file(&path("b"), 3).expect("rm");
    assert!(matches!(
        ws.get_file(&path("b")),
        Err(WorkspaceError::FileNotFound(_))
    ));
}

#[test]
fn concurrent_splices_from_two_authors_merge() {
    let mut ws = new_ws();
    let a = author(1);
    let b = author(2);
    ws.put_file(&path("doc"), b"hello world", &a, 1, [1; 16], LIMIT)
        .expect("put");
    let id = ws.file_doc(&path("doc")).expect("doc id");
    let mut other = ws.files.get_mut(&id).expect("doc").am.fork();
    other.set_actor(b.actor.clone());
    // A edits the start, B the end, concurrently.
    ws.splice(&path("doc"), &[edit(0, 5, "HELLO")], &a, 2)
        .expect("a");
    let text = match other.get(ROOT, "text") {
        Ok(Some((Value::Object(ObjType::Text), t))) => t,
        other => panic!("no text: {other:?}"),
    };
    other.splice_text(&text, 11, 0, "!").expect("b");
    other.commit();
    let theirs = other.get_changes(&[]);
    let mine = ws.files.get_mut(&id).expect("doc");
    xencode_protocol::apply::apply_changes(&mut mine.am, theirs).expect("merge");
    assert_eq!(
        ws.get_file(&path("doc")).expect("get").bytes,
        b"HELLO world!"
    );
}

#[test]
fn a_put_changes_only_the_characters_that_differ() {
    let mut ws = new_ws();
    let a = author(1);
    let p = path("two-places.txt");
    ws.put_file(&p, b"one\ntwo\nthree\n", &a, 1, [1; 16], 1 << 20)
        .expect("put");
    let (_, changes) = ws
        .put_file(&p, b"one!\ntwo\nthree?\n", &a, 2, [2; 16], 1 << 20)
        .expect("put");
    assert_eq!(ws.get_file(&p).expect("get").bytes, b"one!\ntwo\nthree?\n");
    // Two one-character inserts (and the stamp), not a rewrite of the file.
    let ops = changes.iter().map(|c| c.change.len()).sum::<usize>();
    assert!(ops <= 4, "{ops} operations for two inserted characters");
}

#[test]
fn text_over_the_limit_is_stored_whole() {
    let mut ws = new_ws();
    let a = author(1);
    let (info, _) = ws
        .put_file(&path("big.txt"), b"0123456789", &a, 1, [1; 16], 9)
        .expect("put");
    assert_eq!((info.kind, info.chars), (FileKind::Binary, None));
    assert_eq!(
        ws.get_file(&path("big.txt")).expect("get").bytes,
        b"0123456789"
    );
    assert!(matches!(
        ws.splice(&path("big.txt"), &[edit(0, 0, "x")], &a, 2),
        Err(WorkspaceError::NotText(_))
    ));
    let (info, _) = ws
        .put_file(&path("big.txt"), b"012345678", &a, 3, [1; 16], 9)
        .expect("put");
    assert_eq!(
        info.kind,
        FileKind::Text,
        "back under the limit it is text again"
    );
}

#[test]
fn a_one_line_save_of_a_large_file_is_a_small_change() {
    let mut ws = new_ws();
    let a = author(1);
    let p = path("big.txt");
    let line = |i: usize| format!("{i:08} the quick brown fox jumps over the lazy dog, line {i}\n");
    let big: String = (0..14_000).map(line).collect();
    ws.ingest(
        &p,
        big.as_bytes(),
        Some(0o644),
        None,
        &a,
        1,
        [1; 16],
        1 << 20,
    )
    .expect("first");
    let base = ws.file_state(&p).expect("state").base();
    let changed = big.replacen("00007000 the quick", "00007000 the QUICK", 1);
    let changes = ws
        .ingest(
            &p,
            changed.as_bytes(),
            Some(0o644),
            Some(&base),
            &a,
            2,
            [2; 16],
            1 << 20,
        )
        .expect("second");
    assert_eq!(ws.get_file(&p).expect("get").bytes, changed.as_bytes());
    let bytes: usize = changes.iter().map(|c| c.change.raw_bytes().len()).sum();
    assert!(
        bytes < 1024,
        "{bytes} bytes of changes for one changed word"
    );
}

#[test]
fn a_batch_of_new_files_makes_one_index_change() {
    let mut ws = new_ws();
    let a = author(1);
    let index = ws.index.id;
    ws.begin_index_batch();
    let mut changes = Vec::new();
    for i in 0..5u8 {
        let p = path(&format!("new/f{i}.txt"));
        changes.extend(
            ws.ingest(
                &p,
                b"hello\n",
                Some(0o644),
                None,
                &a,
                2,
                [i + 10; 16],
                LIMIT,
            )
            .expect("ingest"),
        );
        // Known at once, though not yet committed.
        assert!(ws.file_state(&p).is_some(), "{p} while batching");
    }
    changes.extend(ws.end_index_batch(3));
    let of_index = changes.iter().filter(|c| c.doc == index).count();
    assert_eq!(of_index, 1, "one index change for five new files");
    assert_eq!(changes.len(), 6, "and one change per file");
    // The change carries the citation of the access heads, like any other.
    let last = changes.last().expect("index change");
    assert!(last.change.message().is_some(), "cited");
    assert_eq!(ws.list_files().len(), 5);
    // Without a batch, each new file is its own index change (an API write).
    let c = ws
        .ingest(&path("g.txt"), b"x", None, None, &a, 4, [99; 16], LIMIT)
        .expect("ingest");
    assert_eq!(c.iter().filter(|c| c.doc == index).count(), 1);
}
