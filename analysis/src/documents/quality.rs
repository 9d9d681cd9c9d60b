//! How far extracted text can be trusted, judged from the text itself, and
//! the repair of words a PDF hyphenated at line ends.
//!
//! Confidence is the share of the document the extractor could read (pages,
//! for a PDF) times a text score: the share of characters that are not
//! replacement, control or private-use characters, times how word-like the
//! tokens are (mostly letters or digits, not too long). Prose in any script
//! scores near 1, source code and tables somewhat lower, random bytes and
//! mis-decoded binaries below 0.3.

/// Below this, the extraction is reported as probably not text.
pub(super) const GARBAGE: f64 = 0.5;

/// The text score of `text`, 0..1 (0 for no text at all).
pub(super) fn text_score(text: &str) -> f64 {
    let (mut chars, mut bad) = (0usize, 0usize);
    for c in text.chars().filter(|c| !c.is_whitespace()) {
        chars += 1;
        if c == '\u{fffd}'
            || c.is_control()
            || ('\u{e000}'..='\u{f8ff}').contains(&c)
            || ('\u{f0000}'..).contains(&c)
        {
            bad += 1;
        }
    }
    if chars == 0 {
        return 0.0;
    }
    let printable = 1.0 - bad as f64 / chars as f64;
    let (mut tokens, mut wordlike) = (0usize, 0usize);
    for token in text.split_whitespace() {
        let n = token.chars().count();
        // Short tokens say little: ".", "–", "(a)", "x,".
        if n <= 3 {
            continue;
        }
        tokens += 1;
        let alnum = token.chars().filter(|c| c.is_alphanumeric()).count();
        // A word with its punctuation ("word," "(see"), a number, a path.
        if n <= 30 && alnum * 5 >= n * 3 {
            wordlike += 1;
        }
    }
    let words = if tokens == 0 {
        1.0
    } else {
        wordlike as f64 / tokens as f64
    };
    // Real text has some non-word tokens (code, tables, formulas): 70 %
    // word-like tokens already counts as fully text-like.
    printable * printable * (words / 0.7).min(1.0)
}

/// A warning for text scoring `score`, if it is low.
pub(super) fn warning(score: f64, chars: usize, kind: &str) -> Option<String> {
    if chars == 0 {
        Some(format!(
            "no text was found: the {kind} may be empty, scanned (images only) or damaged"
        ))
    } else if score < GARBAGE {
        Some(format!(
            "the extracted text does not look like text (score {score:.2}): the file may be damaged or not a {kind}"
        ))
    } else {
        None
    }
}

/// Joins words a PDF split with a hyphen at a line end ("docu-\nment" →
/// "document"), keeping real hyphens: the hyphen stays when the second part
/// starts with a capital or a digit ("Jean-\nPaul", "COVID-\n19"), or when
/// the document spells the word with a hyphen elsewhere and never without
/// ("well-\nknown" with "well-known" on another line).
pub(super) fn dehyphenate(text: &str) -> String {
    if !text.contains("-\n") {
        return text.to_owned();
    }
    let words: std::collections::HashSet<&str> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '-'))
        .filter(|w| !w.is_empty())
        .collect();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("-\n") {
        let (before, after) = (&rest[..at], &rest[at + 2..]);
        let head_start = before.rfind(|c: char| !c.is_alphabetic()).map_or(0, |i| {
            i + before[i..].chars().next().map_or(1, char::len_utf8)
        });
        let head = &before[head_start..];
        let after_trimmed = after.trim_start_matches([' ', '\t']);
        let tail_len = after_trimmed
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(after_trimmed.len());
        let tail = &after_trimmed[..tail_len];
        let join = !head.is_empty()
            && head.chars().last().is_some_and(char::is_lowercase)
            && tail.chars().next().is_some_and(char::is_lowercase);
        out.push_str(before);
        if join {
            let hyphenated = format!("{head}-{tail}");
            let joined = format!("{head}{tail}");
            if words.contains(hyphenated.as_str()) && !words.contains(joined.as_str()) {
                out.push('-');
            }
            // The two halves become one word on the first line.
            out.push_str(tail);
            rest = &after_trimmed[tail_len..];
        } else {
            out.push_str("-\n");
            rest = after;
        }
    }
    out.push_str(rest);
    out
}
