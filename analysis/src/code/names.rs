//! What a name in a call stands for: the security checks match qualified
//! names (`pickle.loads`), so the names a file binds are resolved first.
//! Imports (`import x as y`, `from x import y as z`, `from x import *` for
//! the modules the checks know), and simple assignments of a checked module
//! member (`load = pickle.loads`) are followed; anything else (a name bound
//! in a loop, a parameter, a return value) is left as written, so a name that
//! cannot be resolved is never reported as something it might not be.

use std::collections::HashMap;

use tree_sitter::Node;

/// Modules whose members the security checks look at.
const CHECKED_MODULES: &[&str] = &[
    "builtins",
    "commands",
    "cPickle",
    "_pickle",
    "dill",
    "hashlib",
    "jsonpickle",
    "marshal",
    "os",
    "pickle",
    "shelve",
    "subprocess",
    "yaml",
];

/// The checked members of each module, for `from module import *`.
const STAR_MEMBERS: &[(&str, &[&str])] = &[
    ("builtins", &["eval", "exec"]),
    ("commands", &["getoutput"]),
    ("cPickle", &["load", "loads", "Unpickler"]),
    ("_pickle", &["load", "loads", "Unpickler"]),
    ("dill", &["load", "loads", "Unpickler"]),
    ("hashlib", &["md5", "sha1", "new"]),
    ("jsonpickle", &["decode"]),
    ("marshal", &["load", "loads"]),
    ("os", &["system", "popen"]),
    ("pickle", &["load", "loads", "Unpickler"]),
    (
        "subprocess",
        &[
            "Popen",
            "call",
            "run",
            "check_call",
            "check_output",
            "getoutput",
            "getstatusoutput",
        ],
    ),
    ("yaml", &["load", "load_all", "unsafe_load"]),
];

/// Local names bound to module members or modules, by local name.
#[derive(Debug, Default)]
pub(super) struct Names {
    bound: HashMap<String, String>,
}

fn checked(qualified: &str) -> bool {
    let module = qualified.split('.').next().unwrap_or(qualified);
    CHECKED_MODULES.contains(&module)
}

impl Names {
    /// The qualified name `written` (a dotted call target as written,
    /// without whitespace) stands for.
    pub(super) fn resolve(&self, written: &str) -> String {
        let (head, rest) = match written.split_once('.') {
            Some((h, r)) => (h, Some(r)),
            None => (written, None),
        };
        match (self.bound.get(head), rest) {
            (Some(full), Some(rest)) => format!("{full}.{rest}"),
            (Some(full), None) => full.clone(),
            (None, _) => written.to_owned(),
        }
    }

    /// Learns what `n` binds, if it is an import or a simple assignment.
    pub(super) fn learn(&mut self, n: Node, src: &[u8]) {
        let text = |n: Node| n.utf8_text(src).unwrap_or("").to_owned();
        match n.kind() {
            "import_statement" => {
                let mut cursor = n.walk();
                for name in n.children_by_field_name("name", &mut cursor) {
                    // `import a.b` binds `a` to itself: nothing to record.
                    if name.kind() == "aliased_import"
                        && let (Some(module), Some(alias)) = (
                            name.child_by_field_name("name"),
                            name.child_by_field_name("alias"),
                        )
                    {
                        self.bind(text(alias), text(module));
                    }
                }
            }
            "import_from_statement" => {
                let Some(module) = n.child_by_field_name("module_name") else {
                    return;
                };
                if module.kind() != "dotted_name" {
                    // A relative import is this project's own code.
                    return;
                }
                let module = text(module);
                let mut cursor = n.walk();
                let children: Vec<Node> = n.named_children(&mut cursor).collect();
                for child in children {
                    match child.kind() {
                        "wildcard_import" => {
                            let members = STAR_MEMBERS
                                .iter()
                                .find(|(m, _)| *m == module)
                                .map_or(&[][..], |(_, members)| *members);
                            for member in members {
                                self.bind((*member).to_owned(), format!("{module}.{member}"));
                            }
                        }
                        "aliased_import" => {
                            if let (Some(name), Some(alias)) = (
                                child.child_by_field_name("name"),
                                child.child_by_field_name("alias"),
                            ) {
                                self.bind(text(alias), format!("{module}.{}", text(name)));
                            }
                        }
                        "dotted_name" if n.child_by_field_name("module_name") != Some(child) => {
                            let name = text(child);
                            self.bind(name.clone(), format!("{module}.{name}"));
                        }
                        _ => {}
                    }
                }
            }
            "assignment" => {
                if let (Some(left), Some(right)) = (
                    n.child_by_field_name("left"),
                    n.child_by_field_name("right"),
                ) && left.kind() == "identifier"
                    && matches!(right.kind(), "identifier" | "attribute")
                {
                    let target = self.resolve(&text(right).replace(char::is_whitespace, ""));
                    if target.contains('.') && checked(&target) {
                        self.bind(text(left), target);
                    }
                }
            }
            _ => {}
        }
    }

    fn bind(&mut self, local: String, qualified: String) {
        // A name bound to itself (`from x import x`) or to something the
        // checks do not look at adds nothing. Bindings are file-wide: a
        // name is taken as the member wherever it is used.
        if local != qualified && checked(&qualified) {
            self.bound.insert(local, qualified);
        }
    }
}
