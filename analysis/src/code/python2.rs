//! Python 2 forms the tree-sitter grammar accepts but Python 3 refuses:
//! `print x` and `exec code` statements, backtick repr, `<>`, `ur''` and
//! other string prefixes Python 3 lacks, `0777` octals and `10L` longs,
//! `except E, e:` and `raise E, "message"`. Each is a syntax error in
//! Python 3 (CPython says so at compile time), so each is reported as one,
//! with what Python 3 wants instead.

use tree_sitter::Node;

/// What is wrong with `n` if it is a Python 2 form (`text` reads a node's
/// source).
pub(super) fn problem(n: Node, text: &dyn Fn(Node) -> String) -> Option<String> {
    match n.kind() {
        "print_statement" => {
            Some("Python 2 print statement: Python 3 calls a function, `print(...)`".into())
        }
        "exec_statement" => {
            Some("Python 2 exec statement: Python 3 calls a function, `exec(...)`".into())
        }
        "string" => {
            let start = n.child(0).map(text).unwrap_or_default();
            let prefix: String = start
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect::<String>()
                .to_ascii_lowercase();
            if start.starts_with('`') {
                Some("Python 2 backticks: Python 3 writes `repr(...)`".into())
            } else if !valid_prefix(&prefix) {
                Some(format!(
                    "string prefix `{prefix}` is not Python 3 (it has r, u, b, f and rb, br, fr, rf)"
                ))
            } else {
                None
            }
        }
        "comparison_operator" => {
            let mut cursor = n.walk();
            let ne = n
                .children_by_field_name("operators", &mut cursor)
                .any(|op| op.kind() == "<>");
            ne.then(|| "Python 2 `<>`: Python 3 writes `!=`".into())
        }
        "integer" => {
            let t = text(n);
            if t.ends_with(['l', 'L']) {
                Some(format!(
                    "Python 2 long literal `{t}`: Python 3 integers have no L suffix"
                ))
            } else if t.len() > 1
                && t.starts_with('0')
                && t.bytes().all(|b| b.is_ascii_digit() || b == b'_')
                && t.bytes().any(|b| b.is_ascii_digit() && b != b'0')
            {
                Some(format!(
                    "Python 2 octal literal `{t}`: Python 3 writes `0o{}`",
                    t.trim_start_matches('0')
                ))
            } else {
                None
            }
        }
        "except_clause" => {
            let mut cursor = n.walk();
            let values = n.children_by_field_name("value", &mut cursor).count();
            (values > 1)
                .then(|| "Python 2 `except E, name:`: Python 3 writes `except E as name:`".into())
        }
        "raise_statement" => {
            let mut cursor = n.walk();
            let listed = n
                .named_children(&mut cursor)
                .any(|c| c.kind() == "expression_list");
            listed.then(|| "Python 2 `raise E, value`: Python 3 writes `raise E(value)`".into())
        }
        _ => None,
    }
}

fn valid_prefix(prefix: &str) -> bool {
    matches!(
        prefix,
        "" | "r" | "u" | "b" | "f" | "rb" | "br" | "fr" | "rf" | "t" | "tr" | "rt"
    )
}
