//! The task's pure helpers (the task itself is tested end to end with real
//! nodes and folders in `tests/tests/folders.rs`).

use super::*;

#[test]
fn prefixes_under_another_are_dropped() {
    let set: BTreeSet<String> = ["a", "a/b", "a/b/c", "ab", "b/x", "b/y"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(minimal_prefixes(&set), vec!["a", "ab", "b/x", "b/y"]);
}

#[test]
fn heads_compare_as_sets() {
    let doc = xencode_protocol::DocId::derive(
        &xencode_protocol::WorkspaceId::derive(&[7; 32], &[1; 16]),
        &[1; 16],
    );
    let base = crate::workspace::folder::SyncBase {
        doc,
        heads: vec![[1; 32], [2; 32]],
    };
    assert!(base.is_at(doc, &[[2; 32], [1; 32]]));
    assert!(!base.is_at(doc, &[[1; 32]]));
    let other = xencode_protocol::DocId::derive(
        &xencode_protocol::WorkspaceId::derive(&[7; 32], &[1; 16]),
        &[2; 16],
    );
    assert!(!base.is_at(other, &[[1; 32], [2; 32]]));
}

#[test]
fn paths_differing_only_by_case_are_caught() {
    let existing = ["README.md", "src/Main.py"];
    let incoming: Vec<String> = ["readme.md", "src/Main.py", "docs/A.txt", "docs/a.txt"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    let c = case_collisions(existing.into_iter(), &incoming);
    assert_eq!(c.get("readme.md").map(String::as_str), Some("README.md"));
    assert_eq!(c.get("docs/a.txt").map(String::as_str), Some("docs/A.txt"));
    assert!(
        !c.contains_key("src/Main.py"),
        "the same path is no collision"
    );
    assert!(
        !c.contains_key("docs/A.txt"),
        "the first of two new ones is written"
    );
}
