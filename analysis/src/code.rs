//! Static analysis of Python with tree-sitter: syntax errors (ERROR and
//! MISSING nodes), outline, cyclomatic complexity, security issues with CWE
//! ids, performance hints and suggestions.
//!
//! Every walk is iterative (an explicit stack), so deeply nested input cannot
//! overflow the thread's stack; the parse is bounded in input size and time.
//! A [`Parsed`] keeps the tree, so re-analysing an edited file reuses it
//! (tree-sitter edit + incremental parse).

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use tree_sitter::{InputEdit, Node, ParseOptions, Parser, Point, Tree};
use xencode_protocol::analysis::{
    AiResult, CodeAnalysis, FixEdit, OutlineItem, PerformanceHint, SecurityIssue, Suggestion,
    SyntaxError,
};

/// Limits of one analysis.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_parse_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 8 * 1024 * 1024,
            max_parse_time: Duration::from_secs(30),
        }
    }
}

/// Why a file could not be analysed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnalysisError {
    #[error("the file is {size} bytes; code analysis takes at most {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("parsing took longer than {0:?} and was stopped")]
    Timeout(Duration),
    #[error("the Python grammar could not be loaded: {0}")]
    Grammar(String),
}

/// A parsed file: its source and tree, kept to re-parse incrementally.
pub struct Parsed {
    source: String,
    tree: Tree,
}

/// Parses `source`, reusing `previous` (the parse of an earlier version of
/// the same file) when given; returns the parse and whether it was reused.
pub fn parse(
    source: &str,
    previous: Option<&Parsed>,
    limits: Limits,
) -> Result<(Parsed, bool), AnalysisError> {
    if source.len() > limits.max_bytes {
        return Err(AnalysisError::TooLarge {
            size: source.len(),
            limit: limits.max_bytes,
        });
    }
    let mut parser = Parser::new();
    parser
        .set_language(&tree_sitter_python::LANGUAGE.into())
        .map_err(|e| AnalysisError::Grammar(e.to_string()))?;
    let old = previous.map(|p| {
        let mut tree = p.tree.clone();
        tree.edit(&edit_between(&p.source, source));
        tree
    });
    let deadline = Instant::now() + limits.max_parse_time;
    let mut progress = |_: &tree_sitter::ParseState| {
        if Instant::now() > deadline {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let bytes = source.as_bytes();
    let tree = parser
        .parse_with_options(
            &mut |offset: usize, _: Point| bytes.get(offset..).unwrap_or_default(),
            old.as_ref(),
            Some(ParseOptions::new().progress_callback(&mut progress)),
        )
        .ok_or(AnalysisError::Timeout(limits.max_parse_time))?;
    Ok((
        Parsed {
            source: source.to_owned(),
            tree,
        },
        old.is_some(),
    ))
}

/// The edit that turns `old` into `new`: the span between their common
/// prefix and common suffix (on character boundaries).
fn edit_between(old: &str, new: &str) -> InputEdit {
    let prefix = old
        .char_indices()
        .zip(new.chars())
        .find(|((_, a), b)| a != b)
        .map_or(old.len().min(new.len()), |((i, _), _)| i);
    let max_suffix = old.len().min(new.len()) - prefix;
    let suffix = old[prefix..]
        .chars()
        .rev()
        .zip(new[prefix..].chars().rev())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a.len_utf8())
        .scan(0, |sum, n| {
            *sum += n;
            Some(*sum)
        })
        .take_while(|s| *s <= max_suffix)
        .last()
        .unwrap_or(0);
    InputEdit {
        start_byte: prefix,
        old_end_byte: old.len() - suffix,
        new_end_byte: new.len() - suffix,
        start_position: point_at(old, prefix),
        old_end_position: point_at(old, old.len() - suffix),
        new_end_position: point_at(new, new.len() - suffix),
    }
}

fn point_at(text: &str, byte: usize) -> Point {
    let before = &text.as_bytes()[..byte];
    let row = before.iter().filter(|b| **b == b'\n').count();
    let column = byte
        - before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
    Point { row, column }
}

/// Analyses a parse.
pub fn analyze(parsed: &Parsed) -> CodeAnalysis {
    let mut w = Walker {
        src: parsed.source.as_bytes(),
        out: Findings::default(),
        list_names: HashSet::new(),
        str_names: HashSet::new(),
        loop_attrs: HashSet::new(),
        names: names::Names::default(),
    };
    let root = parsed.tree.root_node();
    w.collect_names(root);
    let problems = compile::encoding(&parsed.source)
        .into_iter()
        .chain(compile::future_imports(root, &|n| w.text(n).to_owned()));
    for p in problems.collect::<Vec<_>>() {
        w.out.syntax_errors.push(SyntaxError {
            line: p.line,
            column: p.column,
            message: p.message,
            severity: "error".into(),
        });
    }
    w.walk(root);
    w.finish()
}

#[derive(Default)]
struct Findings {
    syntax_errors: Vec<SyntaxError>,
    suggestions: Vec<Suggestion>,
    security: Vec<SecurityIssue>,
    performance: Vec<PerformanceHint>,
    outline: Vec<OutlineItem>,
    /// Decision points of module-level code.
    module_decisions: u32,
}

/// Where a node sits.
#[derive(Clone, Copy, Default)]
struct Ctx {
    /// Enclosing loops.
    loops: u32,
    /// The innermost enclosing loop's start byte (to group hints per loop).
    loop_id: usize,
    /// Index in the outline of the innermost enclosing function.
    func: Option<usize>,
    /// Directly inside a class body.
    in_class: bool,
    /// Inside an ERROR node already reported.
    in_error: bool,
}

struct Walker<'a> {
    src: &'a [u8],
    out: Findings,
    /// Names bound to list literals, comprehensions or `list(...)`.
    list_names: HashSet<String>,
    /// Names bound to string literals.
    str_names: HashSet<String>,
    /// (loop, attribute chain) already reported.
    loop_attrs: HashSet<(usize, String)>,
    /// What imported and assigned names stand for.
    names: names::Names,
}

const SECRET_NAMES: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "access_key",
    "auth_key",
];
const ACCESS_WORDS: &[&str] = &[
    "admin",
    "auth",
    "permission",
    "is_staff",
    "superuser",
    "role",
    "logged_in",
    "owner",
    "allowed",
    "authorized",
];
const DECISIONS: &[&str] = &[
    "if_statement",
    "elif_clause",
    "for_statement",
    "while_statement",
    "except_clause",
    "conditional_expression",
    "boolean_operator",
    "for_in_clause",
    "if_clause",
    "case_clause",
];

fn line(n: Node) -> u32 {
    n.start_position().row as u32 + 1
}

fn end_line(n: Node) -> u32 {
    n.end_position().row as u32 + 1
}

/// Whether text mentions a secret-looking name anywhere (password, token,
/// api_key…): the broad test the redaction of AI prompts uses, where
/// hiding too much costs nothing.
pub(crate) fn mentions_secret(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    SECRET_NAMES.iter().any(|s| lower.contains(s))
}

/// Words that name a credential when they end a name.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "credential",
];

/// Words that make a credential of `key` before it (`api_key`, `secret_key`).
const KEY_KINDS: &[&str] = &["api", "private", "access", "auth", "secret", "signing"];

/// Whether a variable, attribute or keyword name holds a credential: the
/// name's last word (snake_case or camelCase) is one (`db_password`,
/// `authToken`, `API_KEY`, `tokens`). A name about a credential is not one:
/// `token_type`, `password_prompt`, `PYPIRC_NOPASSWORD`,
/// `first_token_with_whitespace` (bandit's `token_type == 'comment'`
/// findings are of this kind).
pub(crate) fn is_secret_name(name: &str) -> bool {
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if !c.is_ascii_alphanumeric() {
            words.extend((!word.is_empty()).then(|| std::mem::take(&mut word)));
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower {
            words.push(std::mem::take(&mut word));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        word.push(c.to_ascii_lowercase());
    }
    words.extend((!word.is_empty()).then_some(word));
    let Some(last) = words.last() else {
        return false;
    };
    let single = last.strip_suffix('s').unwrap_or(last);
    if SECRET_WORDS.contains(&last.as_str()) || SECRET_WORDS.contains(&single) {
        return true;
    }
    matches!(single, "key")
        && words.len() >= 2
        && KEY_KINDS.contains(&words[words.len() - 2].as_str())
}

impl Walker<'_> {
    fn text(&self, n: Node) -> &str {
        n.utf8_text(self.src).unwrap_or("")
    }

    /// 1-based character column of a node's start.
    fn column(&self, n: Node) -> u32 {
        let start = n.start_byte();
        let line_start = start - n.start_position().column;
        let chars = std::str::from_utf8(self.src.get(line_start..start).unwrap_or_default())
            .map_or(n.start_position().column, |s| s.chars().count());
        chars as u32 + 1
    }

    /// First pass, in source order: which names hold lists and strings,
    /// and what imported and assigned names stand for.
    fn collect_names(&mut self, root: Node) {
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            self.names.learn(n, self.src);
            if n.kind() == "assignment"
                && let (Some(left), Some(right)) = (
                    n.child_by_field_name("left"),
                    n.child_by_field_name("right"),
                )
                && left.kind() == "identifier"
            {
                let name = self.text(left).to_owned();
                match right.kind() {
                    "list" | "list_comprehension" => {
                        self.list_names.insert(name);
                    }
                    "call"
                        if right
                            .child_by_field_name("function")
                            .is_some_and(|f| self.text(f) == "list") =>
                    {
                        self.list_names.insert(name);
                    }
                    "string" | "concatenated_string" => {
                        self.str_names.insert(name);
                    }
                    _ => {}
                }
            }
            let mut cursor = n.walk();
            let children: Vec<Node> = n.children(&mut cursor).collect();
            stack.extend(children.into_iter().rev());
        }
    }

    fn walk(&mut self, root: Node) {
        let mut stack = vec![(root, Ctx::default())];
        while let Some((n, ctx)) = stack.pop() {
            let mut inner = ctx;
            self.visit(n, &ctx, &mut inner);
            let mut cursor = n.walk();
            let children: Vec<Node> = n.children(&mut cursor).collect();
            for child in children.into_iter().rev() {
                stack.push((child, inner));
            }
        }
    }

    /// Looks at one node; `inner` is the context its children get.
    fn visit(&mut self, n: Node, ctx: &Ctx, inner: &mut Ctx) {
        if n.is_missing() {
            self.out.syntax_errors.push(SyntaxError {
                line: line(n),
                column: self.column(n),
                message: format!("missing `{}`", n.kind()),
                severity: "error".into(),
            });
            return;
        }
        if n.is_error() {
            if !ctx.in_error {
                let first_line = self.text(n).lines().next().unwrap_or("");
                let snippet: String = first_line.chars().take(30).collect();
                self.out.syntax_errors.push(SyntaxError {
                    line: line(n),
                    column: self.column(n),
                    message: format!("invalid syntax near `{}`", snippet.trim()),
                    severity: "error".into(),
                });
            }
            inner.in_error = true;
            return;
        }
        if let Some(message) = python2::problem(n, &|x| self.text(x).to_owned()) {
            self.out.syntax_errors.push(SyntaxError {
                line: line(n),
                column: self.column(n),
                message,
                severity: "error".into(),
            });
        }
        let kind = n.kind();
        if DECISIONS.contains(&kind) {
            match ctx.func {
                Some(i) => self.out.outline[i].complexity += 1,
                None => self.out.module_decisions += 1,
            }
        }
        inner.in_class = false;
        match kind {
            "class_definition" => {
                self.outline(n, "class", 0);
                inner.in_class = true;
                self.docstring(n, "class");
            }
            "block" if ctx.in_class => inner.in_class = true,
            "function_definition" => {
                let kind = if ctx.in_class { "method" } else { "function" };
                inner.func = Some(self.outline(n, kind, 1));
                inner.loops = 0;
                self.function_shape(n);
            }
            "for_statement" | "while_statement" => {
                inner.loops = ctx.loops + 1;
                inner.loop_id = n.start_byte();
                if inner.loops >= 3 {
                    self.perf(
                        n,
                        "deeply_nested_loops",
                        "three or more nested loops: the work grows with the product of their sizes",
                        "high",
                    );
                }
                if kind == "for_statement" {
                    self.range_len(n);
                }
            }
            "call" => self.call(n),
            "assignment" => self.assignment(n, ctx),
            "default_parameter" | "typed_default_parameter" => {
                self.named_secret(n, "defaults to a literal");
            }
            "augmented_assignment" => self.augmented(n, ctx),
            "comparison_operator" if ctx.loops > 0 => self.membership(n),
            "attribute" if ctx.loops > 0 => self.attribute_in_loop(n, ctx),
            "except_clause" => self.except(n),
            "assert_statement" => self.assert(n),
            _ => {}
        }
    }

    fn outline(&mut self, n: Node, kind: &str, complexity: u32) -> usize {
        let name = n
            .child_by_field_name("name")
            .map_or_else(String::new, |x| self.text(x).to_owned());
        self.out.outline.push(OutlineItem {
            kind: kind.into(),
            name,
            line_start: line(n),
            line_end: end_line(n),
            complexity,
        });
        self.out.outline.len() - 1
    }

    fn suggest(&mut self, n: Node, kind: &str, description: String, fix: Option<&str>) {
        self.suggest_with(n, kind, description, fix, Vec::new());
    }

    /// A suggestion with a mechanical fix.
    fn suggest_with(
        &mut self,
        n: Node,
        kind: &str,
        description: String,
        fix: Option<&str>,
        edits: Vec<FixEdit>,
    ) {
        self.out.suggestions.push(Suggestion {
            kind: kind.into(),
            description,
            line_start: line(n),
            line_end: end_line(n),
            suggested_fix: fix.map(str::to_owned),
            edits,
        });
    }

    /// 1-based line and character column of byte `at` of the source.
    fn point(&self, at: usize) -> (u32, u32) {
        let before = self.src.get(..at).unwrap_or(self.src);
        let line_start = before
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |i| i + 1);
        let line = before.iter().filter(|b| **b == b'\n').count() as u32 + 1;
        let col = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count() as u32
            + 1;
        (line, col)
    }

    /// An edit replacing bytes `from..to` of the source with `text`.
    fn replace(&self, from: usize, to: usize, text: &str) -> FixEdit {
        let (line, column) = self.point(from);
        let (end_line, end_column) = self.point(to);
        FixEdit {
            line,
            column,
            end_line,
            end_column,
            text: text.to_owned(),
        }
    }

    fn security(&mut self, n: Node, kind: &str, severity: &str, cwe: &str, description: String) {
        self.out.security.push(SecurityIssue {
            kind: kind.into(),
            severity: severity.into(),
            description,
            line: line(n),
            cwe_id: cwe.into(),
        });
    }

    fn perf(&mut self, n: Node, kind: &str, description: &str, impact: &str) {
        self.out.performance.push(PerformanceHint {
            kind: kind.into(),
            description: description.into(),
            impact: impact.into(),
            line: line(n),
        });
    }

    /// Public definitions without a docstring.
    fn docstring(&mut self, n: Node, what: &str) {
        let name = n
            .child_by_field_name("name")
            .map_or("", |x| x.utf8_text(self.src).unwrap_or(""));
        if name.starts_with('_') {
            return;
        }
        let first = n.child_by_field_name("body").and_then(|b| b.named_child(0));
        let documented = first.is_some_and(|s| {
            s.kind() == "expression_statement"
                && s.named_child(0).is_some_and(|e| e.kind() == "string")
        });
        if !documented {
            self.suggest(
                n,
                "missing_docstring",
                format!("public {what} `{name}` has no docstring"),
                None,
            );
        }
    }

    /// Parameters, defaults, length and docstring of a function.
    fn function_shape(&mut self, n: Node) {
        self.docstring(n, "function");
        let name = n
            .child_by_field_name("name")
            .map_or_else(String::new, |x| self.text(x).to_owned());
        if let Some(params) = n.child_by_field_name("parameters") {
            let mut cursor = params.walk();
            let list: Vec<Node> = params.named_children(&mut cursor).collect();
            let counted = list
                .iter()
                .filter(|p| !matches!(self.text(**p), "self" | "cls"))
                .count();
            if counted > 5 {
                self.suggest(
                    n,
                    "too_many_parameters",
                    format!(
                        "`{name}` takes {counted} parameters; group related ones into an object"
                    ),
                    None,
                );
            }
            for p in list {
                if matches!(p.kind(), "default_parameter" | "typed_default_parameter")
                    && let Some(v) = p.child_by_field_name("value")
                    && matches!(v.kind(), "list" | "dictionary" | "set")
                {
                    let edits = self.none_default(n, p, v);
                    self.suggest_with(
                        p,
                        "mutable_default_argument",
                        format!("a mutable default in `{name}` is shared between calls"),
                        Some("default to None and create the value inside the function"),
                        edits,
                    );
                }
            }
        }
        let lines = end_line(n) - line(n) + 1;
        if lines > 50 {
            self.suggest(
                n,
                "long_function",
                format!("`{name}` is {lines} lines long; split it into smaller functions"),
                None,
            );
        }
    }

    /// The edits that make parameter `p` of function `f` default to None
    /// and create its value `v` inside: none when the body does not start
    /// on a line of its own.
    fn none_default(&self, f: Node, p: Node, v: Node) -> Vec<FixEdit> {
        let Some(name) = p.child_by_field_name("name").map(|x| self.text(x)) else {
            return Vec::new();
        };
        let Some(body) = f.child_by_field_name("body") else {
            return Vec::new();
        };
        let mut cursor = body.walk();
        let stmts: Vec<Node> = body.named_children(&mut cursor).collect();
        let docstring = |s: &Node| {
            s.kind() == "expression_statement"
                && s.named_child(0).is_some_and(|e| e.kind() == "string")
        };
        let Some(first) = stmts
            .iter()
            .find(|s| !docstring(s) && s.kind() != "comment")
        else {
            return Vec::new();
        };
        let at = first.start_byte();
        let line_start = at - first.start_position().column;
        let indent = std::str::from_utf8(&self.src[line_start..at]).unwrap_or("x");
        if line(*first) == line(f) || !indent.chars().all(|c| c == ' ' || c == '\t') {
            return Vec::new();
        }
        let step = if indent.contains('\t') { "\t" } else { "    " };
        let value = self.text(v);
        vec![
            self.replace(v.start_byte(), v.end_byte(), "None"),
            self.replace(
                at,
                at,
                &format!("if {name} is None:\n{indent}{step}{name} = {value}\n{indent}"),
            ),
        ]
    }

    fn call(&mut self, n: Node) {
        let Some(func) = n.child_by_field_name("function") else {
            return;
        };
        let written = self.text(func).replace(char::is_whitespace, "");
        let name = self.names.resolve(&written);
        // Findings name the call as written, and what it stands for.
        let shown = if name == written {
            format!("`{name}`")
        } else {
            format!("`{written}` ({name})")
        };
        let args = n.child_by_field_name("arguments");
        let keyword = |key: &str| -> Option<String> {
            let args = args?;
            let mut cursor = args.walk();
            let found = args.named_children(&mut cursor).find(|a| {
                a.kind() == "keyword_argument"
                    && a.child_by_field_name("name")
                        .is_some_and(|k| k.utf8_text(self.src).unwrap_or("") == key)
            });
            found
                .and_then(|a| a.child_by_field_name("value"))
                .map(|v| v.utf8_text(self.src).unwrap_or("").to_owned())
        };
        let args_text = args.map_or("", |a| a.utf8_text(self.src).unwrap_or(""));
        let last = name.rsplit('.').next().unwrap_or(&name);
        match name.as_str() {
            "eval" | "exec" | "builtins.eval" | "builtins.exec" => self.security(
                n,
                "code_injection",
                "high",
                "CWE-95",
                format!("{shown} runs a string as code; never pass it input you do not control"),
            ),
            "pickle.load" | "pickle.loads" | "cPickle.load" | "cPickle.loads" | "marshal.load"
            | "marshal.loads" | "dill.load" | "dill.loads" | "shelve.open"
            | "yaml.unsafe_load" | "jsonpickle.decode" | "pickle.Unpickler"
            | "cPickle.Unpickler" | "_pickle.Unpickler" | "_pickle.load" | "_pickle.loads"
            | "dill.Unpickler" => self.security(
                n,
                "unsafe_deserialization",
                "high",
                "CWE-502",
                format!("{shown} can run code hidden in its input; load only trusted data, or use JSON"),
            ),
            "yaml.load" | "yaml.load_all"
                if !keyword("Loader").is_some_and(|l| l.contains("Safe")) =>
            {
                if keyword("Loader").is_none() && written == name {
                    let safe = name.replacen("load", "safe_load", 1);
                    let edit = self.replace(func.start_byte(), func.end_byte(), &safe);
                    self.suggest_with(
                        n,
                        "use_safe_load",
                        format!("`{name}` can build arbitrary objects; `{safe}` builds plain data"),
                        Some(&safe),
                        vec![edit],
                    );
                }
                self.security(
                    n,
                    "unsafe_deserialization",
                    "high",
                    "CWE-502",
                    format!("{shown} without a SafeLoader can build arbitrary objects; use yaml.safe_load"),
                );
            }
            "os.system" | "os.popen" | "subprocess.getoutput" | "subprocess.getstatusoutput"
            | "commands.getoutput" => self.security(
                n,
                "command_injection",
                "high",
                "CWE-78",
                format!("{shown} runs its argument through the shell; use subprocess.run with a list of arguments"),
            ),
            // Any shell value but a false literal: `shell=1` is as true as
            // `shell=True`, and `shell=flag` is true whenever `flag` is.
            _ if name.starts_with("subprocess.")
                && keyword("shell")
                    .is_some_and(|v| !matches!(v.as_str(), "False" | "0" | "None" | "\"\"" | "''")) =>
            {
                let value = keyword("shell").unwrap_or_default();
                let (severity, when) = if value == "True" || value.parse::<i64>().is_ok() {
                    ("high", format!("with shell={value}"))
                } else {
                    ("medium", format!("with shell={value} (when it is true)"))
                };
                self.security(
                    n,
                    "command_injection",
                    severity,
                    "CWE-78",
                    format!("{shown} {when} lets shell syntax in its input run; pass a list of arguments without shell"),
                );
            }
            // `usedforsecurity=False` says the hash is not a security
            // control (a cache key, a checksum): Python's own opt-out.
            _ if (matches!(last, "md5" | "sha1")
                || (name == "hashlib.new"
                    && (args_text.contains("md5") || args_text.contains("sha1"))))
                && keyword("usedforsecurity").as_deref() != Some("False") =>
            {
                let for_password = args_text.to_ascii_lowercase().contains("pass");
                let (cwe, severity, what) = if for_password {
                    ("CWE-916", "high", "a password hashed with a fast, broken hash; use hashlib.scrypt, bcrypt or argon2")
                } else {
                    ("CWE-328", "medium", "MD5 and SHA-1 are broken; use SHA-256 or better")
                };
                self.security(n, "weak_hash", severity, cwe, format!("{shown}: {what}"));
            }
            _ => {}
        }
        // Secrets passed as keyword arguments.
        if let Some(args) = args {
            let mut cursor = args.walk();
            let kws: Vec<Node> = args
                .named_children(&mut cursor)
                .filter(|a| a.kind() == "keyword_argument")
                .collect();
            for a in kws {
                self.named_secret(a, "is given a literal");
            }
        }
    }

    /// A non-empty string literal that does not look like a placeholder.
    fn is_secret_literal(&self, v: Node) -> bool {
        if v.kind() != "string" {
            return false;
        }
        let raw = self.text(v);
        let inner = raw.trim_matches(|c| {
            matches!(
                c,
                '"' | '\'' | 'b' | 'r' | 'u' | 'f' | 'B' | 'R' | 'U' | 'F'
            )
        });
        inner.len() >= 4
            && !inner.contains('{')
            && !inner.contains("<")
            && !inner.eq_ignore_ascii_case("changeme")
    }

    /// A node with a `name` and a `value` — a keyword argument
    /// (`connect(password='hunter22')`) or a parameter's default
    /// (`def login(user, password='hunter22')`) — that gives a credential a
    /// literal; `how` says which.
    fn named_secret(&mut self, n: Node, how: &str) {
        if let (Some(name), Some(value)) = (
            n.child_by_field_name("name"),
            n.child_by_field_name("value"),
        ) && is_secret_name(self.text(name))
            && self.is_secret_literal(value)
        {
            let name = self.text(name).to_owned();
            self.security(
                n,
                "hardcoded_secret",
                "high",
                "CWE-798",
                format!("`{name}` {how}; read secrets from the environment or a secret store"),
            );
        }
    }

    fn assignment(&mut self, n: Node, ctx: &Ctx) {
        let (Some(left), Some(right)) = (
            n.child_by_field_name("left"),
            n.child_by_field_name("right"),
        ) else {
            return;
        };
        let target = self.text(left).to_owned();
        let simple = target.rsplit('.').next().unwrap_or(&target).to_owned();
        if is_secret_name(&simple) && self.is_secret_literal(right) {
            self.security(
                n,
                "hardcoded_secret",
                "high",
                "CWE-798",
                format!("`{target}` holds a literal secret; read it from the environment or a secret store"),
            );
        }
        // x = x + "..." in a loop.
        if ctx.loops > 0
            && right.kind() == "binary_operator"
            && right
                .child_by_field_name("left")
                .is_some_and(|l| self.text(l) == target)
            && right
                .child_by_field_name("right")
                .is_some_and(|r| r.kind() == "string" || self.str_names.contains(&target))
        {
            self.string_concat(n);
        }
    }

    fn augmented(&mut self, n: Node, ctx: &Ctx) {
        if ctx.loops == 0 {
            return;
        }
        let op = n
            .child_by_field_name("operator")
            .map_or("", |o| self.text(o));
        let left = n
            .child_by_field_name("left")
            .map_or("", |l| self.text(l))
            .to_owned();
        let right_is_str = n
            .child_by_field_name("right")
            .is_some_and(|r| matches!(r.kind(), "string" | "concatenated_string"));
        if op == "+=" && (right_is_str || self.str_names.contains(&left)) {
            self.string_concat(n);
        }
    }

    fn string_concat(&mut self, n: Node) {
        self.perf(
            n,
            "string_concatenation_in_loop",
            "building a string with + in a loop copies it every time; collect the parts in a list and \"\".join() them",
            "medium",
        );
    }

    /// `x in some_list` inside a loop.
    fn membership(&mut self, n: Node) {
        let mut cursor = n.walk();
        let children: Vec<Node> = n.children(&mut cursor).collect();
        let Some(op) = children
            .iter()
            .position(|c| matches!(c.kind(), "in" | "not in"))
        else {
            return;
        };
        let Some(right) = children.get(op + 1) else {
            return;
        };
        let is_list = right.kind() == "list"
            || (right.kind() == "identifier" && self.list_names.contains(self.text(*right)));
        if is_list {
            self.perf(
                n,
                "list_membership_in_loop",
                "`in` on a list scans it on every iteration; make it a set once, before the loop",
                "medium",
            );
        }
    }

    /// `a.b.c` (two or more lookups) evaluated on every iteration.
    fn attribute_in_loop(&mut self, n: Node, ctx: &Ctx) {
        if n.parent().is_some_and(|p| p.kind() == "attribute") {
            return; // only the outermost chain
        }
        let text = self.text(n).to_owned();
        if text.matches('.').count() < 2 || text.contains('(') || text.contains('\n') {
            return;
        }
        if self.loop_attrs.insert((ctx.loop_id, text.clone())) {
            self.out.performance.push(PerformanceHint {
                kind: "repeated_attribute_lookup".into(),
                description: format!(
                    "`{text}` is looked up on every iteration; bind it to a local before the loop"
                ),
                impact: "low".into(),
                line: line(n),
            });
        }
    }

    /// `for i in range(len(x))`.
    fn range_len(&mut self, n: Node) {
        let Some(right) = n.child_by_field_name("right") else {
            return;
        };
        let text = self.text(right).replace(char::is_whitespace, "");
        if text.starts_with("range(len(") {
            self.perf(
                n,
                "range_len",
                "indexing through range(len(...)) is slower and noisier than iterating",
                "low",
            );
            self.suggest(
                n,
                "use_enumerate",
                "iterate over the sequence, or use enumerate() when the index is needed".into(),
                Some("for i, item in enumerate(items):"),
            );
        }
    }

    fn except(&mut self, n: Node) {
        let mut cursor = n.walk();
        let bare = !n
            .named_children(&mut cursor)
            .any(|c| c.kind() != "block" && c.kind() != "comment");
        if bare {
            self.security(
                n,
                "bare_except",
                "medium",
                "CWE-396",
                "a bare `except:` also catches KeyboardInterrupt and SystemExit and hides real errors".into(),
            );
            let edits = n
                .child(0)
                .filter(|k| k.kind() == "except")
                .map(|k| vec![self.replace(k.end_byte(), k.end_byte(), " Exception")])
                .unwrap_or_default();
            self.suggest_with(
                n,
                "bare_except",
                "catch the exceptions you expect".into(),
                Some("except Exception:"),
                edits,
            );
        }
    }

    fn assert(&mut self, n: Node) {
        let text = self.text(n).to_ascii_lowercase();
        if ACCESS_WORDS.iter().any(|w| text.contains(w)) {
            self.security(
                n,
                "assert_for_access_control",
                "medium",
                "CWE-703",
                "assert is removed under `python -O`, so this access check disappears; raise an exception instead".into(),
            );
        }
    }

    fn finish(mut self) -> CodeAnalysis {
        let funcs: Vec<u32> = self
            .out
            .outline
            .iter()
            .filter(|o| o.kind != "class")
            .map(|o| o.complexity)
            .collect();
        for o in &self.out.outline {
            if o.kind != "class" && o.complexity > 10 {
                self.out.suggestions.push(Suggestion {
                    kind: "reduce_complexity".into(),
                    description: format!(
                        "`{}` has cyclomatic complexity {}; split it or simplify its branches",
                        o.name, o.complexity
                    ),
                    line_start: o.line_start,
                    line_end: o.line_end,
                    suggested_fix: None,
                    edits: Vec::new(),
                });
            }
        }
        let mut scores: Vec<u32> = funcs;
        if self.out.module_decisions > 0 || scores.is_empty() {
            scores.push(1 + self.out.module_decisions);
        }
        let mean = f64::from(scores.iter().sum::<u32>()) / scores.len() as f64;
        let complexity_score = (mean * 100.0).round() / 100.0;
        self.out.security.sort_by_key(|i| i.line);
        self.out.performance.sort_by_key(|h| h.line);
        self.out.suggestions.sort_by_key(|s| s.line_start);
        self.out.syntax_errors.sort_by_key(|e| (e.line, e.column));
        CodeAnalysis {
            language: "python".into(),
            syntax_errors: self.out.syntax_errors,
            suggestions: self.out.suggestions,
            complexity_score,
            security_issues: self.out.security,
            performance_hints: self.out.performance,
            outline: self.out.outline,
            ai: AiResult {
                status: "not_requested".into(),
                model: None,
                text: None,
            },
        }
    }
}

/// Per-file parses kept for incremental re-analysis, least recently used
/// dropped first.
pub struct ParseCache {
    entries: HashMap<String, Parsed>,
    order: std::collections::VecDeque<String>,
    capacity: usize,
}

impl ParseCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: std::collections::VecDeque::new(),
            capacity,
        }
    }

    /// Parses and analyses `source` for `key`, reusing the previous parse of
    /// the same key; returns the analysis and whether the tree was reused.
    pub fn analyze(
        &mut self,
        key: &str,
        source: &str,
        limits: Limits,
    ) -> Result<(CodeAnalysis, bool), AnalysisError> {
        let previous = self.entries.remove(key);
        self.order.retain(|k| k != key);
        let (parsed, reused) = parse(source, previous.as_ref(), limits)?;
        let analysis = analyze(&parsed);
        if self.order.len() >= self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.entries.remove(&old);
        }
        self.entries.insert(key.to_owned(), parsed);
        self.order.push_back(key.to_owned());
        Ok((analysis, reused))
    }
}

mod compile;
mod names;
mod python2;

#[cfg(test)]
mod tests;
