//! Diffs and three-way merges: exact on hand-made cases, and by property on
//! random texts (the diff reproduces its target; a merge with an unchanged
//! side is the other side, with two equal sides that side; disjoint line
//! edits both survive).

use proptest::prelude::*;

use super::*;

fn merged(base: &str, ours: &str, theirs: &str) -> String {
    apply(theirs, &rebase(base, &edits(base, ours), theirs))
}

#[test]
fn a_one_character_change_is_one_small_splice() {
    let old = "fn main() {\n    println!(\"hi\");\n}\n";
    let new = "fn main() {\n    println!(\"ho\");\n}\n";
    let e = edits(old, new);
    assert_eq!(
        e,
        vec![Edit {
            pos: 27,
            delete: 1,
            insert: "o".into()
        }]
    );
}

#[test]
fn positions_count_characters_not_bytes() {
    let e = edits("héllo wörld", "héllo wörlds");
    assert_eq!(
        e,
        vec![Edit {
            pos: 11,
            delete: 0,
            insert: "s".into()
        }]
    );
    assert_eq!(
        apply("héllo wörld", &splices("héllo wörld", "hé wörld!")),
        "hé wörld!"
    );
}

#[test]
fn edits_to_different_lines_both_survive() {
    let base = "one\ntwo\nthree\nfour\n";
    let ours = "one\nTWO\nthree\nfour\n";
    let theirs = "one\ntwo\nthree\nfour!\n";
    assert_eq!(merged(base, ours, theirs), "one\nTWO\nthree\nfour!\n");
}

#[test]
fn text_the_other_side_inserted_inside_our_deletion_is_kept() {
    let base = "abcdef";
    let ours = "af"; // deleted bcde
    let theirs = "abcXdef"; // inserted X inside it
    assert_eq!(merged(base, ours, theirs), "aXf");
}

#[test]
fn both_deleting_the_same_text_deletes_it_once() {
    assert_eq!(
        merged("keep drop keep", "keep keep", "keep keep"),
        "keep keep"
    );
    assert_eq!(merged("a b c d", "a d", "a c d"), "a d");
}

#[test]
fn an_edit_both_sides_made_alike_is_made_once() {
    assert_eq!(merged("ab", "aXb", "aXb"), "aXb");
    // A tool writes what the teammate's live edits made, plus its change.
    let base = "def main():\n    return 1\n";
    let theirs = "AAA# from A\ndef main():\n    return 1\n";
    let ours = "AAA# from A\ndef main():\n    return 2\n";
    assert_eq!(merged(base, ours, theirs), ours);
}

#[test]
fn both_inserting_at_one_place_keeps_both_ours_after() {
    assert_eq!(merged("ab", "aOURSb", "aTHEIRSb"), "aTHEIRSOURSb");
}

#[test]
fn an_insert_inside_text_the_other_side_replaced_goes_after_it() {
    // "world" -> "there" is, by characters, "wo" -> "the", "r" kept,
    // "ld" -> "e": our "-" after "wo" lands after "the".
    assert_eq!(
        merged("hello world", "hello wo-rld", "hello there"),
        "hello the-re"
    );
    assert_eq!(merged("abcdef", "abc-def", "aXYZf"), "aXYZ-f");
    // Before the replaced text, it stays before it.
    assert_eq!(
        merged("hello world", "hello, world", "hello there"),
        "hello, there"
    );
}

#[test]
fn a_large_rewrite_is_still_correct() {
    let old: String = (0..5000).map(|i| format!("line {i}\n")).collect();
    let new: String = (0..5000)
        .map(|i| {
            if i % 7 == 0 {
                format!("changed {i}\n")
            } else {
                format!("line {i}\n")
            }
        })
        .collect();
    assert_eq!(apply(&old, &splices(&old, &new)), new);
    // And the edits are small: only the changed words.
    let inserted: usize = edits(&old, &new).iter().map(|e| e.insert.len()).sum();
    assert!(inserted < 5000, "inserted {inserted} bytes for 715 words");
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "é", "\n", "xy", "🦀"]),
        0..40,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    #[test]
    fn the_splices_reproduce_the_new_text(old in text(), new in text()) {
        prop_assert_eq!(apply(&old, &splices(&old, &new)), new);
    }

    #[test]
    fn a_merge_with_one_side_unchanged_is_the_other_side(base in text(), other in text()) {
        prop_assert_eq!(merged(&base, &base, &other), other.clone());
        prop_assert_eq!(merged(&base, &other, &base), other.clone());
        prop_assert_eq!(merged(&base, &other, &other), other, "made alike, made once");
    }

    #[test]
    fn disjoint_line_edits_both_survive(
        lines in prop::collection::vec("[a-z]{1,6}", 4..12),
        a in 0usize..12, b in 0usize..12, wa in "[A-Z]{1,4}", wb in "[0-9]{1,4}",
    ) {
        let n = lines.len();
        let (a, b) = (a % n, b % n);
        prop_assume!(a.abs_diff(b) >= 2);
        let join = |l: &[String]| l.iter().map(|s| format!("{s}\n")).collect::<String>();
        let base = join(&lines);
        let mut ours = lines.clone();
        ours[a] = wa.clone();
        let mut theirs = lines.clone();
        theirs[b] = wb.clone();
        let mut both = lines.clone();
        both[a] = wa;
        both[b] = wb;
        prop_assert_eq!(merged(&base, &join(&ours), &join(&theirs)), join(&both));
    }
}
