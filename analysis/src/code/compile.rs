//! File-level refusals CPython makes while compiling that a grammar cannot
//! see: `from __future__` imports after other statements or naming features
//! that do not exist, and an encoding declaration naming an unknown codec
//! (or anything but UTF-8 after a byte-order mark). Checked against
//! CPython's own `test/badsyntax_*` and `bad_coding*` files.

use tree_sitter::Node;

/// Features `from __future__ import` knows (CPython's `Lib/__future__.py`).
const FEATURES: &[&str] = &[
    "nested_scopes",
    "generators",
    "division",
    "absolute_import",
    "with_statement",
    "print_function",
    "unicode_literals",
    "barry_as_FLUFL",
    "generator_stop",
    "annotations",
];

/// A problem at a 1-based line and column.
pub(super) struct Problem {
    pub line: u32,
    pub column: u32,
    pub message: String,
}

fn at(n: Node, message: String) -> Problem {
    Problem {
        line: n.start_position().row as u32 + 1,
        column: n.start_position().column as u32 + 1,
        message,
    }
}

/// The `from __future__` problems of a module.
pub(super) fn future_imports(root: Node, text: &dyn Fn(Node) -> String) -> Vec<Problem> {
    let mut out = Vec::new();
    // Only a docstring, comments and other future imports may come first.
    let mut at_top = true;
    let mut first = true;
    let mut cursor = root.walk();
    for stmt in root.named_children(&mut cursor) {
        if stmt.kind() == "comment" {
            continue;
        }
        let is_first = std::mem::take(&mut first);
        match stmt.kind() {
            "future_import_statement" => {
                if !at_top {
                    out.push(at(
                        stmt,
                        "from __future__ imports must occur at the beginning of the file".into(),
                    ));
                }
                let mut names = stmt.walk();
                for name in stmt.children_by_field_name("name", &mut names) {
                    let feature = name
                        .child_by_field_name("name")
                        .map_or_else(|| text(name), text);
                    if feature == "braces" {
                        out.push(at(
                            name,
                            "not a chance (from __future__ import braces)".into(),
                        ));
                    } else if !FEATURES.contains(&feature.as_str()) {
                        out.push(at(name, format!("future feature {feature} is not defined")));
                    }
                }
                let mut all = stmt.walk();
                if stmt
                    .children(&mut all)
                    .any(|c| c.kind() == "wildcard_import" || c.kind() == "*")
                {
                    out.push(at(stmt, "future feature * is not defined".into()));
                }
            }
            "expression_statement"
                if is_first
                    && stmt.named_child_count() == 1
                    && stmt.named_child(0).is_some_and(|c| c.kind() == "string") =>
            {
                // The docstring.
            }
            _ => at_top = false,
        }
    }
    out
}

/// The encoding declaration's problem, if any (PEP 263: a `coding[:=]`
/// comment on line 1 or 2).
pub(super) fn encoding(src: &str) -> Option<Problem> {
    let bom = src.starts_with('\u{feff}');
    let body = src.trim_start_matches('\u{feff}');
    for (i, line) in body.lines().take(2).enumerate() {
        let trimmed = line.trim_start_matches([' ', '\t', '\x0c']);
        if !trimmed.starts_with('#') {
            if trimmed.is_empty() {
                continue;
            }
            // Line 2 counts only after a comment or blank line 1.
            return None;
        }
        let Some(name) = cookie(trimmed) else {
            continue;
        };
        let normal = name.to_ascii_lowercase().replace('_', "-");
        let problem = if bom && normal != "utf-8" && !normal.starts_with("utf-8-") {
            Some(format!("encoding problem: {name} with BOM"))
        } else if !known_codec(&normal) {
            Some(format!("unknown encoding: {name}"))
        } else {
            None
        };
        return problem.map(|message| Problem {
            line: i as u32 + 1,
            column: 1,
            message,
        });
    }
    None
}

/// The codec a `coding[:=] name` comment names.
fn cookie(comment: &str) -> Option<&str> {
    let at = comment.find("coding")?;
    let rest = comment[at + "coding".len()..].strip_prefix([':', '='])?;
    let rest = rest.trim_start_matches([' ', '\t']);
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(rest.len());
    (end > 0).then(|| &rest[..end])
}

/// Whether Python has a codec of this (lowercase, `_` as `-`) name: the
/// families by prefix, the rest by name. A codec missing here is reported
/// as unknown; the list covers every codec in CPython's `encodings` package
/// that source files use.
fn known_codec(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "utf-",
        "utf8",
        "utf16",
        "utf32",
        "iso-8859-",
        "iso8859-",
        "iso8859",
        "latin",
        "cp",
        "windows-",
        "mac-",
        "mac",
        "koi8-",
        "euc-",
        "euc",
        "big5",
        "gb",
        "shift-jis",
        "shiftjis",
        "sjis",
        "iso-2022-",
        "iso2022",
        "ibm",
        "ms",
        "hz",
        "johab",
        "tis-620",
        "hp-roman8",
        "ptcp154",
        "kz1048",
        "charmap",
        "palmos",
        "l1",
        "l2",
        "l3",
        "l4",
        "l5",
        "l6",
        "l7",
        "l8",
        "l9",
        "l10",
        "8859",
        "csiso",
        "csibm",
    ];
    const NAMES: &[&str] = &[
        "ascii",
        "us-ascii",
        "us",
        "646",
        "ansi-x3.4-1968",
        "unicode-escape",
        "raw-unicode-escape",
        "idna",
        "punycode",
        "u8",
        "u16",
        "u32",
        "utf",
        "unicode-1-1-utf-7",
        "dbcs",
        "mbcs",
        "oem",
    ];
    NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}
