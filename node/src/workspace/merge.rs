//! Character-level diffs and three-way merges of text, for files edited on
//! disk (ARCHITECTURE section 11).
//!
//! A linked folder remembers, per file, the text last synced to or from disk
//! (the *base*). A save on disk becomes the smallest splices that turn the
//! base into what is on disk ([`edits`]). If the workspace moved on since
//! the base (a teammate's edit arrived before the save was seen), those
//! splices are carried over onto the workspace's text ([`rebase`]): both
//! sides' edits survive, the way Automerge merges concurrent splices.
//!
//! Positions count Unicode scalar values, as Automerge's text does. Nothing
//! here is quadratic in the text: a common prefix and suffix are cut first,
//! the rest is diffed by lines and then by characters inside changed lines,
//! each under a deadline past which the region is replaced whole.

use std::time::{Duration, Instant};

use similar::{Algorithm, DiffOp, capture_diff_slices_deadline};
use xencode_protocol::api::SpliceEdit;

/// One edit of a text, in the coordinates of the text before any edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// First character replaced.
    pub pos: usize,
    /// Characters removed.
    pub delete: usize,
    /// Text inserted in their place.
    pub insert: String,
}

/// Regions larger than this (in lines or characters) are not refined further.
const MAX_REFINE: usize = 20_000;
/// Time for one diff before the region is taken as replaced whole.
const DEADLINE: Duration = Duration::from_millis(200);

/// The edits, sorted and non-overlapping, in `old`'s coordinates, that turn
/// `old` into `new`.
pub fn edits(old: &str, new: &str) -> Vec<Edit> {
    let old_chars: Vec<char> = old.chars().collect();
    let new_chars: Vec<char> = new.chars().collect();
    let prefix = old_chars
        .iter()
        .zip(&new_chars)
        .take_while(|(a, b)| a == b)
        .count();
    let suffix = old_chars[prefix..]
        .iter()
        .rev()
        .zip(new_chars[prefix..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    let old_mid = &old_chars[prefix..old_chars.len() - suffix];
    let new_mid = &new_chars[prefix..new_chars.len() - suffix];
    let mut out = Vec::new();
    if old_mid.is_empty() && new_mid.is_empty() {
        return out;
    }
    let deadline = Instant::now() + DEADLINE;
    by_lines(old_mid, new_mid, prefix, deadline, &mut out);
    out
}

/// Diffs by lines, then refines each replaced group of lines by characters.
fn by_lines(old: &[char], new: &[char], offset: usize, deadline: Instant, out: &mut Vec<Edit>) {
    let old_lines = lines(old);
    let new_lines = lines(new);
    if old_lines.len() > MAX_REFINE || new_lines.len() > MAX_REFINE {
        return whole(old, new, offset, out);
    }
    let old_keys: Vec<&[char]> = old_lines.iter().map(|r| &old[r.clone()]).collect();
    let new_keys: Vec<&[char]> = new_lines.iter().map(|r| &new[r.clone()]).collect();
    let ops = capture_diff_slices_deadline(Algorithm::Myers, &old_keys, &new_keys, Some(deadline));
    let span = |lines: &[std::ops::Range<usize>], r: std::ops::Range<usize>, len: usize| {
        let start = lines.get(r.start).map_or(len, |l| l.start);
        let end = if r.end == 0 {
            start
        } else {
            lines.get(r.end - 1).map_or(len, |l| l.end)
        };
        start..end.max(start)
    };
    for op in ops {
        if matches!(op, DiffOp::Equal { .. }) {
            continue;
        }
        let o = span(&old_lines, op.old_range(), old.len());
        let n = span(&new_lines, op.new_range(), new.len());
        by_chars(&old[o.clone()], &new[n], offset + o.start, deadline, out);
    }
}

/// Diffs a changed region by characters (or replaces it whole if it is too
/// large or time ran out).
fn by_chars(old: &[char], new: &[char], offset: usize, deadline: Instant, out: &mut Vec<Edit>) {
    if old.len() > MAX_REFINE || new.len() > MAX_REFINE || Instant::now() >= deadline {
        return whole(old, new, offset, out);
    }
    let ops = capture_diff_slices_deadline(Algorithm::Myers, old, new, Some(deadline));
    for op in ops {
        let (o, n) = (op.old_range(), op.new_range());
        if matches!(op, DiffOp::Equal { .. }) {
            continue;
        }
        push(
            out,
            Edit {
                pos: offset + o.start,
                delete: o.len(),
                insert: new[n].iter().collect(),
            },
        );
    }
}

fn whole(old: &[char], new: &[char], offset: usize, out: &mut Vec<Edit>) {
    push(
        out,
        Edit {
            pos: offset,
            delete: old.len(),
            insert: new.iter().collect(),
        },
    );
}

/// Appends an edit, joining it to the previous one if they touch.
fn push(out: &mut Vec<Edit>, e: Edit) {
    if e.delete == 0 && e.insert.is_empty() {
        return;
    }
    if let Some(last) = out.last_mut()
        && last.pos + last.delete == e.pos
    {
        last.delete += e.delete;
        last.insert.push_str(&e.insert);
        return;
    }
    out.push(e);
}

/// Character ranges of the lines of `text`, each with its line end.
fn lines(text: &[char]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.iter().enumerate() {
        if *c == '\n' {
            out.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < text.len() {
        out.push(start..text.len());
    }
    out
}

/// Carries `ours` (edits of `base`, from [`edits`]) over onto `theirs`, a
/// later version of `base`: returns splices to apply to `theirs`, in the
/// sequential form the store takes (each relative to the text the ones
/// before it left). Text that `theirs` inserted is never deleted, text that
/// both deleted is deleted once, an edit both sides made alike is made once
/// (as git's merge does: a tool that wrote the text a teammate already has,
/// plus its own change, adds only its change), and where both inserted
/// different text at one place, our text goes after theirs.
pub fn rebase(base: &str, ours: &[Edit], theirs: &str) -> Vec<SpliceEdit> {
    let remote = edits(base, theirs);
    // Each surviving base position maps to a position in `theirs`.
    let map = PositionMap::new(&remote);
    let mut out: Vec<(usize, usize, String)> = Vec::new();
    for e in ours {
        let i = remote.partition_point(|r| r.pos < e.pos);
        if remote[i..]
            .iter()
            .take_while(|r| r.pos == e.pos)
            .any(|r| r == e)
        {
            continue;
        }
        let mut deletes = Vec::new();
        for (a, b) in map.surviving(e.pos, e.pos + e.delete) {
            let start = map.forward(a);
            deletes.push((start, b - a));
        }
        let at = map.insert_point(e.pos);
        // Deletions after the insertion point first (higher positions),
        // then the insertion: sorting below keeps that order.
        for (start, len) in deletes {
            out.push((start, len, String::new()));
        }
        if !e.insert.is_empty() {
            out.push((at, 0, e.insert.clone()));
        }
    }
    // Apply from the end so earlier positions stay valid; at equal
    // positions, deletions before the insertion placed there.
    out.sort_by(|x, y| y.0.cmp(&x.0).then_with(|| y.1.cmp(&x.1)));
    out.into_iter()
        .map(|(pos, delete, insert)| SpliceEdit {
            pos: pos as u64,
            delete: delete as u64,
            insert,
        })
        .collect()
}

/// Maps positions of a base text to a text that `edits` made from it.
struct PositionMap<'a> {
    edits: &'a [Edit],
    /// `shift[i]`: how far base positions after edit `i - 1` move.
    shift: Vec<isize>,
}

impl<'a> PositionMap<'a> {
    fn new(edits: &'a [Edit]) -> Self {
        let mut shift = Vec::with_capacity(edits.len() + 1);
        let mut s = 0isize;
        shift.push(0);
        for e in edits {
            s += e.insert.chars().count() as isize - e.delete as isize;
            shift.push(s);
        }
        Self { edits, shift }
    }

    /// Where the base character at `pos` (one no remote edit replaced)
    /// lands: after every remote edit that ends at or before it.
    fn forward(&self, pos: usize) -> usize {
        let i = self.edits.partition_point(|e| e.pos + e.delete <= pos);
        pos.saturating_add_signed(self.shift[i])
    }

    /// Where to insert text that was inserted at base position `pos`: after
    /// whatever the other side put at or around it.
    fn insert_point(&self, pos: usize) -> usize {
        let i = self.edits.partition_point(|e| e.pos + e.delete <= pos);
        match self.edits.get(i) {
            // A remote edit replaced text at `pos`: ours goes after its text.
            Some(e) if e.pos <= pos => {
                e.pos.saturating_add_signed(self.shift[i]) + e.insert.chars().count()
            }
            _ => pos.saturating_add_signed(self.shift[i]),
        }
    }

    /// The parts of base range `a..b` that no remote edit replaced.
    fn surviving(&self, a: usize, b: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut cur = a;
        let mut i = self.edits.partition_point(|e| e.pos + e.delete <= a);
        while cur < b {
            match self.edits.get(i) {
                Some(e) if e.pos < b => {
                    if e.pos > cur {
                        out.push((cur, e.pos));
                    }
                    cur = cur.max(e.pos + e.delete);
                    i += 1;
                }
                _ => {
                    out.push((cur, b));
                    cur = b;
                }
            }
        }
        out
    }
}

/// Applies sequential splices to a text (for tests and for predicting what
/// the store will hold).
pub fn apply(text: &str, splices: &[SpliceEdit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for s in splices {
        let pos = (s.pos as usize).min(chars.len());
        let end = (pos + s.delete as usize).min(chars.len());
        chars.splice(pos..end, s.insert.chars());
    }
    chars.into_iter().collect()
}

/// [`edits`] in the sequential form the store takes.
pub fn splices(old: &str, new: &str) -> Vec<SpliceEdit> {
    rebase(old, &edits(old, new), old)
}

#[cfg(test)]
mod tests;
