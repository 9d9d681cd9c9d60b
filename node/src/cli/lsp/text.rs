//! Positions as LSP counts them (lines, UTF-16 code units) against text as
//! the node counts it (Unicode scalar values), and edits between the two.
//!
//! Lines end at `\n`, `\r\n` or a lone `\r` (LSP's rule); a column past the
//! end of its line means the end of the line, a line past the end of the
//! text means its end.

use serde_json::{Value, json};
use xencode_node::workspace::merge;
use xencode_protocol::api::SpliceEdit;

/// An LSP position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: u32,
    pub character: u32,
}

impl Pos {
    pub fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            line: u32::try_from(v.get("line")?.as_u64()?).ok()?,
            character: u32::try_from(v.get("character")?.as_u64()?).ok()?,
        })
    }

    pub fn to_json(self) -> Value {
        json!({"line": self.line, "character": self.character})
    }
}

/// The byte offset of `pos` in `text`.
pub fn byte_at(text: &str, pos: Pos) -> usize {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut line = 0;
    while line < pos.line {
        match bytes[i..].iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(k) => {
                i += k;
                i += if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                line += 1;
            }
            None => return text.len(),
        }
    }
    let mut units = 0u32;
    for (k, c) in text[i..].char_indices() {
        if c == '\n' || c == '\r' || units >= pos.character {
            return i + k;
        }
        units += c.len_utf16() as u32;
    }
    text.len()
}

/// The LSP position of byte offset `at` (a char boundary) in `text`.
pub fn pos_at(text: &str, at: usize) -> Pos {
    let before = &text[..at];
    let mut line = 0u32;
    let mut start = 0;
    let b = before.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\n' || (b[i] == b'\r' && b.get(i + 1) != Some(&b'\n')) {
            line += 1;
            start = i + 1;
        }
        i += 1;
    }
    // "\r" at the very end of `before` followed by "\n" in the text: still
    // on the line the pair ends.
    let character = before[start..]
        .chars()
        .filter(|c| *c != '\r')
        .map(|c| c.len_utf16() as u32)
        .sum();
    Pos { line, character }
}

/// The LSP position of character `column` (0-based, in Unicode scalar
/// values) of line `line` (0-based) of `text`, clamped to the line's end.
pub fn pos_of_char(text: &str, line: u32, column: u32) -> Pos {
    let start = byte_at(text, Pos { line, character: 0 });
    let mut at = start;
    for (n, (k, c)) in text[start..].char_indices().enumerate() {
        if n >= column as usize || c == '\n' || c == '\r' {
            at = start + k;
            break;
        }
        at = start + k + c.len_utf8();
    }
    pos_at(text, at)
}

/// Applies one `contentChanges` entry (a range and its new text, or the
/// whole text) to `text`. For a ranged change, returns the byte range it
/// replaced and the length of the new text.
pub fn apply_change(
    text: &mut String,
    change: &Value,
) -> Result<Option<(usize, usize, usize)>, String> {
    let new = change
        .get("text")
        .and_then(Value::as_str)
        .ok_or("a content change without text")?;
    match change.get("range") {
        None | Some(Value::Null) => {
            text.clear();
            text.push_str(new);
            Ok(None)
        }
        Some(range) => {
            let start = range.get("start").and_then(Pos::from_json);
            let end = range.get("end").and_then(Pos::from_json);
            let (Some(start), Some(end)) = (start, end) else {
                return Err("a content change with a malformed range".into());
            };
            let (a, b) = (byte_at(text, start), byte_at(text, end));
            if a > b {
                return Err("a content change whose range ends before it starts".into());
            }
            text.replace_range(a..b, new);
            Ok(Some((a, b, new.len())))
        }
    }
}

/// Byte offset of scalar index `n` in `text`, counting from byte `from`
/// (itself at scalar index `at`).
fn byte_of_char(text: &str, from: usize, at: u64, n: u64) -> usize {
    let skip = usize::try_from(n - at).unwrap_or(usize::MAX);
    text[from..]
        .char_indices()
        .nth(skip)
        .map_or(text.len(), |(k, _)| from + k)
}

/// LSP `TextEdit`s (all relative to `old`, as LSP wants, in order and
/// apart) that turn `old` into `new`: one per changed place, so that the
/// editor keeps its cursor, marks and undo steps elsewhere.
pub fn text_edits(old: &str, new: &str) -> Vec<Value> {
    // Each changed place as byte ranges of `old` and of `new`; between two
    // of them both texts hold the same characters.
    let mut groups: Vec<[usize; 4]> = Vec::new();
    let (mut ob, mut oc, mut nb, mut nc) = (0usize, 0u64, 0usize, 0u64);
    for e in merge::edits(old, new) {
        let (pos, delete) = (e.pos as u64, e.delete as u64);
        let at = nc + (pos - oc);
        let oa = byte_of_char(old, ob, oc, pos);
        let na = byte_of_char(new, nb, nc, at);
        let o_end = byte_of_char(old, oa, pos, pos + delete);
        let n_end = na + e.insert.len();
        groups.push([oa, o_end, na, n_end]);
        (ob, oc) = (o_end, pos + delete);
        (nb, nc) = (n_end, at + e.insert.chars().count() as u64);
    }
    join_touching(&mut groups);
    // LSP has no position between "\r" and "\n": a place that splits one
    // takes the pair whole (the character it takes is the same in both
    // texts, since places do not touch).
    for g in &mut groups {
        if splits_crlf(old, g[0]) {
            g[0] -= 1;
            g[2] -= 1;
        }
        if splits_crlf(old, g[1]) {
            g[1] += 1;
            g[3] += 1;
        }
    }
    join_touching(&mut groups);
    groups
        .into_iter()
        .map(|[oa, ob, na, nb]| {
            json!({
                "range": {"start": pos_at(old, oa).to_json(), "end": pos_at(old, ob).to_json()},
                "newText": new[na..nb],
            })
        })
        .collect()
}

/// Joins changed places that touch or overlap into one.
fn join_touching(groups: &mut Vec<[usize; 4]>) {
    let mut out: Vec<[usize; 4]> = Vec::with_capacity(groups.len());
    for g in groups.drain(..) {
        match out.last_mut() {
            Some(last) if last[1] >= g[0] => {
                last[1] = last[1].max(g[1]);
                last[3] = last[3].max(g[3]);
            }
            _ => out.push(g),
        }
    }
    *groups = out;
}

/// Whether byte `at` falls between the two bytes of a "\r\n".
fn splits_crlf(text: &str, at: usize) -> bool {
    at > 0 && text.as_bytes().get(at - 1) == Some(&b'\r') && text.as_bytes().get(at) == Some(&b'\n')
}

/// Applies LSP `TextEdit`s (relative to `text`, not overlapping) to `text`.
#[cfg(test)]
pub fn apply_text_edits(text: &str, edits: &[Value]) -> String {
    let mut spans: Vec<(usize, usize, String)> = edits
        .iter()
        .map(|e| {
            let r = &e["range"];
            let a = byte_at(text, Pos::from_json(&r["start"]).expect("start"));
            let b = byte_at(text, Pos::from_json(&r["end"]).expect("end"));
            (a, b, e["newText"].as_str().expect("text").to_owned())
        })
        .collect();
    spans.sort_by_key(|s| std::cmp::Reverse(s.0));
    let mut out = text.to_owned();
    for (a, b, t) in spans {
        out.replace_range(a..b, &t);
    }
    out
}

/// The node's splices that turn `old` into `new`.
pub fn diff(old: &str, new: &str) -> Vec<SpliceEdit> {
    merge::splices(old, new)
}

/// Applies node splices to `text`.
pub fn apply_splices(text: &str, edits: &[SpliceEdit]) -> String {
    merge::apply(text, edits)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn p(line: u32, character: u32) -> Pos {
        Pos { line, character }
    }

    #[test]
    fn utf16_columns_and_every_line_ending() {
        let t = "a😀b\r\nsé\rx\ny";
        assert_eq!(byte_at(t, p(0, 3)), "a😀".len(), "the emoji is two units");
        assert_eq!(byte_at(t, p(0, 99)), "a😀b".len(), "clamped to the line");
        assert_eq!(byte_at(t, p(1, 1)), "a😀b\r\ns".len());
        assert_eq!(
            byte_at(t, p(2, 0)),
            "a😀b\r\nsé\r".len(),
            "a lone \\r ends a line"
        );
        assert_eq!(byte_at(t, p(3, 1)), t.len());
        assert_eq!(byte_at(t, p(9, 0)), t.len());
        for at in (0..=t.len()).filter(|a| t.is_char_boundary(*a)) {
            let inside_crlf =
                at > 0 && t.as_bytes()[at - 1] == b'\r' && t.as_bytes().get(at) == Some(&b'\n');
            if !inside_crlf {
                assert_eq!(byte_at(t, pos_at(t, at)), at, "round trip at {at}");
            }
        }
    }

    #[test]
    fn character_columns_become_utf16_positions_within_the_line() {
        let t = "a😀b\r\nxy";
        assert_eq!(pos_of_char(t, 0, 2), p(0, 3), "the emoji is two units");
        assert_eq!(pos_of_char(t, 0, 9), p(0, 4), "clamped to the line");
        assert_eq!(pos_of_char(t, 1, 1), p(1, 1));
        assert_eq!(pos_of_char(t, 7, 0), pos_at(t, t.len()), "past the end");
    }

    #[test]
    fn content_changes_apply_like_an_editor() {
        let mut t = String::from("hello\nworld\n");
        let change = json!({"range": {"start": {"line": 1, "character": 0}, "end": {"line": 1, "character": 5}}, "text": "there"});
        let replaced = apply_change(&mut t, &change).expect("apply");
        assert_eq!(t, "hello\nthere\n");
        assert_eq!(replaced, Some((6, 11, 5)));
        let whole = apply_change(&mut t, &json!({"text": "all new"})).expect("full");
        assert_eq!(whole, None);
        assert_eq!(t, "all new");
        let backwards = json!({"range": {"start": {"line": 0, "character": 3}, "end": {"line": 0, "character": 1}}, "text": ""});
        assert!(apply_change(&mut t, &backwards).is_err());
        assert_eq!(t, "all new", "untouched");
    }

    #[test]
    fn separate_changes_are_separate_edits_in_order() {
        let old = "one\ntwo\nthree\n";
        let new = "one!\ntwo\nthree?\n";
        let edits = text_edits(old, new);
        assert_eq!(edits.len(), 2, "{edits:?}");
        assert_eq!(edits[0]["range"]["start"], p(0, 3).to_json());
        assert_eq!(edits[1]["range"]["start"], p(2, 5).to_json());
        assert_eq!(apply_text_edits(old, &edits), new);
    }

    proptest! {
        #[test]
        fn text_edits_turn_old_into_new(old in "[ab\n\r😀é]{0,24}", new in "[ab\n\r😀é]{0,24}") {
            let edits = text_edits(&old, &new);
            prop_assert_eq!(apply_text_edits(&old, &edits), new);
            let at = |e: &Value, end: &str| byte_at(&old, Pos::from_json(&e["range"][end]).expect("pos"));
            for w in edits.windows(2) {
                prop_assert!(at(&w[0], "end") < at(&w[1], "start"), "in order and apart: {:?}", edits);
            }
        }
    }
}
