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
    assert!(same_heads(&[[1; 32], [2; 32]], &[[2; 32], [1; 32]]));
    assert!(!same_heads(&[[1; 32]], &[[1; 32], [2; 32]]));
}
