//! The document's exchange with the node, answer by answer, with the
//! editor's keystrokes falling between request and answer.

use serde_json::json;
use xencode_node::workspace::merge;
use xencode_protocol::api::SpliceResponse;
use xencode_protocol::{WorkspaceId, WorkspacePath};

use super::{OpenDoc, clip};
use crate::cli::lsp::text;

fn doc(text: &str) -> OpenDoc {
    OpenDoc::new(
        "file:///f/a.py".into(),
        WorkspaceId::from_bytes([9; 16]),
        WorkspacePath::parse("a.py").expect("path"),
        1,
        text.into(),
    )
}

/// The node's answer: it holds `node` at `heads`, reached from `from`.
fn answer(from: &str, node: &str, heads: &str) -> SpliceResponse {
    SpliceResponse {
        path: WorkspacePath::parse("a.py").expect("path"),
        edits_applied: 0,
        chars: node.chars().count() as u64,
        heads: vec![heads.into()],
        mine: Some(vec![format!("{heads}-mine")]),
        catch_up: Some(merge::splices(from, node)),
    }
}

/// A document whose first exchange found the node's text equal (at "h1").
fn synced(text: &str) -> OpenDoc {
    let mut d = doc(text);
    d.next_request().expect("first request");
    assert_eq!(d.answer(answer("", text, "h1")), None);
    d
}

/// `d` with a poll of the node in flight (a teammate's edit arrived).
fn polling(mut d: OpenDoc) -> OpenDoc {
    d.poll = true;
    d.next_request().expect("poll");
    d
}

/// A keystroke: `text` typed at the end.
fn type_at_end(d: &mut OpenDoc, typed: &str) {
    let end = json!({"line": 1_000_000, "character": 0});
    d.change(&json!({"range": {"start": end, "end": end}, "text": typed}))
        .expect("change");
}

#[test]
fn a_keystroke_before_the_first_answer_is_sent_not_undone() {
    let mut d = doc("x = 1\n");
    assert!(d.next_request().is_some());
    type_at_end(&mut d, "# tail");
    assert_eq!(d.answer(answer("", "x = 1\n", "h1")), None);
    let req = d.next_request().expect("the keystroke goes to the node");
    assert_eq!(req.base, Some(vec!["h1".to_owned()]));
    let edits = req.edits.expect("edits");
    assert_eq!(merge::apply("x = 1\n", &edits), "x = 1\n# tail");
}

/// The node went down before it answered the first request: what is typed
/// then is sent once it is back, not replaced by the node's text (the first
/// request went again with the typed text as the editor's text).
#[test]
fn keystrokes_typed_before_a_failed_first_request_are_kept() {
    let mut d = doc("one\n");
    assert!(d.next_request().is_some());
    d.failed();
    type_at_end(&mut d, "typed while the node was down");
    assert!(d.next_request().is_some(), "the first request goes again");
    assert_eq!(d.answer(answer("", "one\n", "h1")), None);
    let req = d.next_request().expect("the keystrokes go to the node");
    let edits = req.edits.expect("edits");
    assert_eq!(
        merge::apply("one\n", &edits),
        "one\ntyped while the node was down"
    );
    // And when a teammate changed the file meanwhile, both are kept.
    let mut d = doc("one\n");
    assert!(d.next_request().is_some());
    d.failed();
    type_at_end(&mut d, "mine");
    assert!(d.next_request().is_some());
    let edits = d
        .answer(answer("", "zero\none\n", "h1"))
        .expect("the teammate's line goes to the editor");
    let editor = text::apply_text_edits(&d.shadow, &edits);
    assert_eq!(editor, "zero\none\nmine");
}

#[test]
fn a_newer_node_text_reaches_the_editor_with_its_keystrokes_kept() {
    let mut d = doc("x = 1\n");
    assert!(d.next_request().is_some());
    type_at_end(&mut d, "# tail");
    let edits = d
        .answer(answer("", "x = 2\n", "h1"))
        .expect("the node's side goes to the editor");
    let editor = text::apply_text_edits(&d.shadow, &edits);
    assert_eq!(editor, "x = 2\n# tail");
    // The echo: nothing else goes until it is seen, then only the keystroke.
    assert!(d.next_request().is_none());
    d.sent_as(1);
    d.change(&json!({"text": editor})).expect("echo");
    d.applied(1);
    let req = d.next_request().expect("the keystroke goes to the node");
    let edits = req.edits.expect("edits");
    assert_eq!(merge::apply("x = 2\n", &edits), "x = 2\n# tail");
}

#[test]
fn a_teammates_edit_is_applied_once_even_when_the_editor_types_over_it() {
    let mut d = polling(synced("ab\n"));
    d.answer(answer("ab\n", "Tab\n", "h2"))
        .expect("the teammate's edit");
    d.sent_as(7);
    // The editor types first, so it skips the versioned edit.
    type_at_end(&mut d, "!");
    d.applied(7);
    let req = d.next_request().expect("resend");
    // The next exchange starts from what the editor last sent ("ab\n"):
    // the node merges and brings the teammate's "T" once.
    assert_eq!(req.base, Some(vec!["h2-mine".to_owned()]));
    let mine = req.edits.expect("edits");
    assert_eq!(merge::apply("ab\n", &mine), "ab\n!");
    let back = d.answer(answer("ab\n!", "Tab\n!", "h3")).expect("catch-up");
    assert_eq!(text::apply_text_edits(&d.shadow, &back), "Tab\n!");
}

#[test]
fn log_excerpts_are_cut_at_a_character_boundary() {
    let s = "é".repeat(200);
    let c = clip(s);
    assert!(c.len() <= 300 && c.chars().all(|ch| ch == 'é'));
    assert_eq!(clip("short".into()), "short");
}

#[test]
fn the_answer_to_an_earlier_apply_edit_does_not_settle_a_later_one() {
    let mut d = polling(synced("ab\n"));
    let first = d.answer(answer("ab\n", "Tab\n", "h2")).expect("first");
    d.sent_as(1);
    // The editor applies it (its echo), and a second teammate edit goes
    // out before the editor's answer to the first arrives.
    d.change(&json!({"text": text::apply_text_edits(&d.shadow, &first)}))
        .expect("echo");
    d.poll = true;
    d.next_request().expect("poll");
    let second = d.answer(answer("Tab\n", "TTab\n", "h3")).expect("second");
    d.sent_as(2);
    d.applied(1);
    // The second edit's echo is still the editor applying it, not a
    // keystroke: nothing goes back to the node.
    d.change(&json!({"text": text::apply_text_edits(&d.shadow, &second)}))
        .expect("echo");
    d.applied(2);
    assert_eq!(d.shadow, "TTab\n");
    assert!(
        d.next_request().is_none(),
        "the teammate's edit is not resent"
    );
}

#[test]
fn an_edit_the_editor_applied_a_little_differently_is_not_sent_back() {
    let mut d = polling(synced("a\nb\n"));
    let teammate = "a\nteammate's long line\nb\n";
    d.answer(answer("a\nb\n", teammate, "h2")).expect("edit");
    d.sent_as(3);
    // The editor applies it, then fixes up its last line on its own.
    d.change(&json!({"text": "a\nteammate's long line\nb"}))
        .expect("echo");
    d.applied(3);
    let req = d.next_request().expect("the fix-up goes to the node");
    assert_eq!(req.base, Some(vec!["h2".to_owned()]));
    let edits = req.edits.expect("edits");
    assert_eq!(merge::apply(teammate, &edits), "a\nteammate's long line\nb");
}
