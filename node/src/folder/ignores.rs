//! What a folder does not sync, and walking what it does.
//!
//! `.git/` never syncs, nor does the folder's own `.xencode/` marker, the
//! temporary files of its atomic writes, or editor swap files. Beyond that,
//! `.gitignore`, `.ignore` and `.xencodeignore` in any directory are
//! honoured with gitignore semantics (the `ignore` crate, as ripgrep): a
//! deeper file overrides a shallower one, and a `!pattern` re-includes.
//! Only regular files are synced: symlinks are never followed (nor synced),
//! special files (sockets, fifos, devices) are skipped.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// Ignore files read in every directory, in increasing precedence.
pub const IGNORE_FILES: [&str; 3] = [".gitignore", ".ignore", ".xencodeignore"];

/// Names never synced, whatever the ignore files say.
fn built_in(name: &str, is_dir: bool) -> bool {
    (is_dir && (name == ".git" || name == ".xencode"))
        || name.starts_with(super::disk::TMP_PREFIX)
        // Vim's swap files and its write probe, Emacs' lock files.
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name == "4913"
        || name.starts_with(".#")
}

/// The ignore rules of a folder: per directory (relative path, "" for the
/// root), the matcher built from its ignore files.
#[derive(Default)]
pub struct Ignores {
    root: PathBuf,
    by_dir: BTreeMap<String, Gitignore>,
}

impl Ignores {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            by_dir: BTreeMap::new(),
        }
    }

    /// (Re)reads the ignore files of directory `dir` (relative).
    pub fn load_dir(&mut self, dir: &str) -> Vec<String> {
        let abs = if dir.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir)
        };
        let mut builder = GitignoreBuilder::new(&abs);
        let mut errors = Vec::new();
        let mut any = false;
        for name in IGNORE_FILES {
            let file = abs.join(name);
            if fs::symlink_metadata(&file).is_ok_and(|m| m.file_type().is_file()) {
                any = true;
                if let Some(e) = builder.add(&file) {
                    errors.push(format!("{}: {e}", file.display()));
                }
            }
        }
        if !any {
            self.by_dir.remove(dir);
            return errors;
        }
        match builder.build() {
            Ok(g) => {
                self.by_dir.insert(dir.to_owned(), g);
            }
            Err(e) => {
                errors.push(format!("{}: {e}", abs.display()));
                self.by_dir.remove(dir);
            }
        }
        errors
    }

    /// Whether `rel` is, or lies in, something never synced whatever the
    /// ignore files say (`.git/`, `.xencode/`, temporary and swap files).
    pub fn never_synced(rel: &str) -> bool {
        let parts: Vec<&str> = rel.split('/').collect();
        parts
            .iter()
            .enumerate()
            .any(|(i, p)| built_in(p, i + 1 < parts.len()))
    }

    /// Whether `rel` (a path relative to the root) is ignored, or lies in
    /// an ignored directory.
    pub fn ignored(&self, rel: &str, is_dir: bool) -> bool {
        let parts: Vec<&str> = rel.split('/').collect();
        for i in 0..parts.len() {
            let last = i + 1 == parts.len();
            let dir_here = !last || is_dir;
            if built_in(parts[i], dir_here) {
                return true;
            }
            let sub = parts[..=i].join("/");
            if self.matched(&sub, dir_here) {
                return true;
            }
        }
        false
    }

    /// The verdict of the ignore files above `rel` (deepest decides).
    fn matched(&self, rel: &str, is_dir: bool) -> bool {
        let abs = self.root.join(rel);
        let mut verdict = false;
        let mut dir = String::new();
        for part in rel.split('/') {
            if let Some(g) = self.by_dir.get(&dir) {
                let m = g.matched(&abs, is_dir);
                if m.is_ignore() {
                    verdict = true;
                } else if m.is_whitelist() {
                    verdict = false;
                }
            }
            if !dir.is_empty() {
                dir.push('/');
            }
            dir.push_str(part);
        }
        verdict
    }
}

/// What a walk found.
#[derive(Default, Debug)]
pub struct Walked {
    /// Regular files, relative path -> metadata.
    pub files: BTreeMap<String, fs::Metadata>,
    /// Directories walked (relative; "" is the root): to watch.
    pub dirs: Vec<String>,
    /// Entries left out, with why (special files, unrepresentable names).
    pub skipped: Vec<String>,
}

/// Walks `start` (relative to the root; "" for all), loading ignore files
/// on the way down, pruning ignored directories, never following symlinks.
pub fn walk(ignores: &mut Ignores, start: &str, errors: &mut Vec<String>) -> Walked {
    let mut out = Walked::default();
    let mut stack = vec![start.to_owned()];
    while let Some(dir) = stack.pop() {
        errors.extend(ignores.load_dir(&dir));
        let abs = if dir.is_empty() {
            ignores.root.clone()
        } else {
            ignores.root.join(&dir)
        };
        let entries = match fs::read_dir(&abs) {
            Ok(e) => e,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::NotFound {
                    errors.push(format!("{}: {e}", abs.display()));
                }
                continue;
            }
        };
        out.dirs.push(dir.clone());
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                out.skipped
                    .push(format!("{}: the name is not UTF-8", entry.path().display()));
                continue;
            };
            let rel = if dir.is_empty() {
                name.to_owned()
            } else {
                format!("{dir}/{name}")
            };
            let Ok(meta) = fs::symlink_metadata(entry.path()) else {
                continue;
            };
            let t = meta.file_type();
            if t.is_symlink() {
                continue;
            }
            if ignores.ignored(&rel, t.is_dir()) {
                continue;
            }
            if t.is_dir() {
                stack.push(rel);
            } else if t.is_file() {
                if xencode_protocol::WorkspacePath::parse(&rel).is_err() {
                    out.skipped
                        .push(format!("{rel}: not a valid workspace path"));
                    continue;
                }
                out.files.insert(rel, meta);
            } else {
                out.skipped.push(format!("{rel}: a special file"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
