//! Edits at a base: an editor's keystrokes merged with a teammate's that
//! arrived meanwhile, and the catch-up that brings the editor's text to the
//! merged one.

use proptest::prelude::*;

use super::super::merge;
use super::super::tests::{LIMIT, author, edit, new_ws, path};
use super::*;

fn text(ws: &mut Workspace, p: &str) -> String {
    String::from_utf8(ws.get_file(&path(p)).expect("get").bytes).expect("utf-8")
}

#[test]
fn an_edit_at_an_old_base_merges_and_catches_the_editor_up() {
    let mut ws = new_ws();
    let (a, b) = (author(1), author(2));
    ws.put_file(
        &path("f.py"),
        b"def f():\n    pass\n",
        &a,
        1,
        [1; 16],
        LIMIT,
    )
    .expect("put");
    // The editor opens: an empty base gives the whole text.
    let open = ws.edit(&path("f.py"), Some(&[]), &[], &a, 2).expect("open");
    assert_eq!(open.mine, Vec::<ChangeHash>::new());
    assert_eq!(merge::apply("", &open.catch_up), "def f():\n    pass\n");
    assert!(open.changes.is_empty(), "a catch-up writes nothing");
    let base = open.heads;
    // A teammate's edit arrives; the editor, not knowing, types at its base.
    ws.splice(&path("f.py"), &[edit(4, 1, "g")], &b, 3)
        .expect("teammate");
    let typed = ws
        .edit(
            &path("f.py"),
            Some(&base),
            &[edit(13, 4, "return 1")],
            &a,
            4,
        )
        .expect("editor");
    assert_eq!(typed.changes.len(), 1);
    assert_eq!(text(&mut ws, "f.py"), "def g():\n    return 1\n");
    // The editor's text (its base plus its edit) caught up to the merge.
    let editor = merge::apply("def f():\n    return 1\n", &typed.catch_up);
    assert_eq!(editor, "def g():\n    return 1\n");
    assert_eq!(typed.catch_up, vec![edit(4, 1, "g")]);
    // From `mine`, only the catch-up is left.
    let again = ws
        .edit(&path("f.py"), Some(&typed.mine), &[], &a, 5)
        .expect("poll");
    assert_eq!(again.catch_up, typed.catch_up);
    let none = ws
        .edit(&path("f.py"), Some(&typed.heads), &[], &a, 5)
        .expect("poll");
    assert!(none.catch_up.is_empty());
}

#[test]
fn bases_that_are_not_this_files_are_refused() {
    let mut ws = new_ws();
    let a = author(1);
    ws.put_file(&path("x"), b"one", &a, 1, [1; 16], LIMIT)
        .expect("put");
    ws.put_file(&path("y"), b"two", &a, 1, [2; 16], LIMIT)
        .expect("put");
    let y = ws.edit(&path("y"), Some(&[]), &[], &a, 2).expect("y");
    assert!(matches!(
        ws.edit(&path("x"), Some(&y.heads), &[], &a, 2),
        Err(WorkspaceError::UnknownBase(_))
    ));
    // Edits at the empty document: there was no text there yet.
    assert!(matches!(
        ws.edit(&path("x"), Some(&[]), &[edit(0, 0, "z")], &a, 2),
        Err(WorkspaceError::UnknownBase(_))
    ));
    // Out of range at the base, although in range now.
    let x = ws.edit(&path("x"), Some(&[]), &[], &a, 2).expect("x");
    ws.splice(&path("x"), &[edit(3, 0, " two three")], &a, 3)
        .expect("grow");
    assert!(matches!(
        ws.edit(&path("x"), Some(&x.heads), &[edit(5, 0, "!")], &a, 4),
        Err(WorkspaceError::OutOfRange { len: 3, .. })
    ));
    assert_eq!(text(&mut ws, "x"), "one two three", "nothing half-applied");
}

/// One step of an editor session: the editor types (at its base) or a
/// teammate types (at the current version).
#[derive(Debug, Clone)]
enum Step {
    Editor(u16, u8, String),
    Teammate(u16, u8, String),
}

fn step() -> impl Strategy<Value = Step> {
    let e = (any::<u16>(), 0u8..4, "[a-zé\n]{0,3}");
    prop_oneof![
        e.clone().prop_map(|(p, d, s)| Step::Editor(p, d, s)),
        e.prop_map(|(p, d, s)| Step::Teammate(p, d, s)),
    ]
}

/// An edit that fits `text`.
fn fit(text: &str, pos: u16, delete: u8, insert: &str) -> SpliceEdit {
    let len = text.chars().count() as u64;
    let pos = u64::from(pos) % (len + 1);
    edit(pos, u64::from(delete).min(len - pos), insert)
}

proptest! {
    /// Whatever interleaving of the editor's and a teammate's edits, the
    /// editor's text, kept only by its own edits and the catch-ups it is
    /// sent, ends equal to the node's; nothing typed is lost or doubled
    /// (the node's text is the editor's edits and the teammate's, merged).
    #[test]
    fn an_editor_fed_catch_ups_converges(steps in proptest::collection::vec(step(), 1..40)) {
        let mut ws = new_ws();
        let (a, b) = (author(1), author(2));
        ws.put_file(&path("t"), b"start", &a, 1, [1; 16], LIMIT).expect("put");
        let open = ws.edit(&path("t"), Some(&[]), &[], &a, 2).expect("open");
        let mut editor = merge::apply("", &open.catch_up);
        let mut base = open.heads;
        let mut typed = 0usize;
        for s in steps {
            match s {
                Step::Editor(p, d, ins) => {
                    let e = fit(&editor, p, d, &ins);
                    typed += ins.chars().count();
                    editor = merge::apply(&editor, std::slice::from_ref(&e));
                    let r = ws.edit(&path("t"), Some(&base), &[e], &a, 3).expect("editor");
                    editor = merge::apply(&editor, &r.catch_up);
                    base = r.heads;
                }
                Step::Teammate(p, d, ins) => {
                    let now = text(&mut ws, "t");
                    let e = fit(&now, p, d, &ins);
                    typed += ins.chars().count();
                    ws.splice(&path("t"), &[e], &b, 3).expect("teammate");
                }
            }
        }
        let r = ws.edit(&path("t"), Some(&base), &[], &a, 4).expect("poll");
        editor = merge::apply(&editor, &r.catch_up);
        prop_assert_eq!(&editor, &text(&mut ws, "t"));
        prop_assert!(editor.chars().count() <= "start".len() + typed);
    }
}

#[test]
fn cursors_follow_their_character_and_hostile_ones_place_nowhere() {
    let mut ws = new_ws();
    let a = author(1);
    ws.put_file(&path("f.py"), b"abcdef", &a, 1, [1; 16], LIMIT)
        .expect("put");
    let heads = ws
        .edit(&path("f.py"), Some(&[]), &[], &a, 2)
        .expect("read")
        .heads;
    // On `d`; text typed before it moves it along, text after does not.
    let c = ws.cursor(&path("f.py"), 3, &heads).expect("a cursor");
    ws.splice(&path("f.py"), &[edit(0, 0, "XY")], &a, 3)
        .expect("before");
    ws.splice(&path("f.py"), &[edit(7, 0, "Z")], &a, 4)
        .expect("after");
    assert_eq!(ws.cursor_position(&path("f.py"), &c), Some(5));
    // At or past the end: the end, wherever it goes.
    let end = ws.cursor(&path("f.py"), u64::MAX, &heads).expect("end");
    assert_eq!(ws.cursor_position(&path("f.py"), &end), Some(9));
    // Unknown heads, files or junk from a peer: nothing, and no panic.
    assert_eq!(ws.cursor(&path("f.py"), 1, &[ChangeHash([9; 32])]), None);
    assert_eq!(ws.cursor(&path("nope.py"), 1, &heads), None);
    let actor = "ab".repeat(16);
    for junk in [
        "",
        "é",
        "é@00",
        "x",
        "-",
        "@",
        "1@",
        "-1@zz",
        "99999999999999999999@00",
        "18446744073709551615@00",
        &format!("3@{actor}"),
        &format!("0@{actor}"),
        "s",
        "e",
    ] {
        let p = ws.cursor_position(&path("f.py"), junk);
        assert!(p.is_none_or(|p| p <= 9), "{junk:?} placed at {p:?}");
    }
}
