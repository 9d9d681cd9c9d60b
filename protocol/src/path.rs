//! Paths of files inside a workspace.
//!
//! A workspace path is relative, `/`-separated, and names one file: no empty
//! components, no `.` or `..`, no NUL or other control characters, no
//! backslashes (so it means the same on every OS), and bounded in length.
//! Every path that arrives from a user or a peer goes through
//! [`WorkspacePath::parse`] before it touches a document.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest path accepted, in bytes.
pub const MAX_PATH_BYTES: usize = 1024;
/// Longest single component accepted, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 255;
/// Deepest nesting accepted.
pub const MAX_DEPTH: usize = 64;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    #[error("the path is {0} bytes long; the limit is {MAX_PATH_BYTES}")]
    TooLong(usize),
    #[error("a path component is longer than {MAX_COMPONENT_BYTES} bytes")]
    ComponentTooLong,
    #[error("the path is nested deeper than {MAX_DEPTH} directories")]
    TooDeep,
    #[error("the path must be relative to the workspace (no leading '/')")]
    Absolute,
    #[error("the path may not contain '.' or '..' components")]
    DotComponent,
    #[error("the path has an empty component ('//' or a trailing '/')")]
    EmptyComponent,
    #[error("the path contains a NUL byte")]
    Nul,
    #[error("the path contains a control character")]
    Control,
    #[error("the path contains a backslash; use '/' to separate directories")]
    Backslash,
}

/// A validated workspace path.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkspacePath(String);

impl WorkspacePath {
    /// Validates `raw` as a workspace path.
    pub fn parse(raw: &str) -> Result<Self, PathError> {
        if raw.is_empty() {
            return Err(PathError::Empty);
        }
        if raw.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(raw.len()));
        }
        if raw.contains('\0') {
            return Err(PathError::Nul);
        }
        if raw.chars().any(char::is_control) {
            return Err(PathError::Control);
        }
        if raw.contains('\\') {
            return Err(PathError::Backslash);
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute);
        }
        let mut depth = 0;
        for component in raw.split('/') {
            depth += 1;
            match component {
                "" => return Err(PathError::EmptyComponent),
                "." | ".." => return Err(PathError::DotComponent),
                c if c.len() > MAX_COMPONENT_BYTES => return Err(PathError::ComponentTooLong),
                _ => {}
            }
        }
        if depth > MAX_DEPTH {
            return Err(PathError::TooDeep);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The path as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file name's extension, lowercased, if any.
    pub fn extension(&self) -> Option<String> {
        let name = self.0.rsplit('/').next()?;
        let (stem, ext) = name.rsplit_once('.')?;
        (!stem.is_empty() && !ext.is_empty()).then(|| ext.to_ascii_lowercase())
    }
}

impl fmt::Display for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkspacePath({:?})", self.0)
    }
}

impl schemars::JsonSchema for WorkspacePath {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WorkspacePath".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A relative path inside the workspace: `/`-separated, no `..`, no empty or absolute parts",
        })
    }
}

impl Serialize for WorkspacePath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for WorkspacePath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordinary_paths_are_accepted() {
        for p in [
            "main.py",
            "src/lib.rs",
            "docs/design v2.md",
            "a/b/c/.hidden",
            "ünï/cödé.py",
        ] {
            assert_eq!(
                WorkspacePath::parse(p).map(|p| p.to_string()),
                Ok(p.to_owned())
            );
        }
    }

    #[test]
    fn traversal_and_hostile_paths_are_refused() {
        let cases = [
            ("", PathError::Empty),
            ("/etc/passwd", PathError::Absolute),
            ("../secret", PathError::DotComponent),
            ("a/../../b", PathError::DotComponent),
            ("a/./b", PathError::DotComponent),
            ("a//b", PathError::EmptyComponent),
            ("a/", PathError::EmptyComponent),
            ("a\0b", PathError::Nul),
            ("a\nb", PathError::Control),
            ("a\\..\\b", PathError::Backslash),
        ];
        for (raw, want) in cases {
            assert_eq!(WorkspacePath::parse(raw), Err(want), "{raw:?}");
        }
        assert_eq!(
            WorkspacePath::parse(&"a".repeat(MAX_PATH_BYTES + 1)),
            Err(PathError::TooLong(MAX_PATH_BYTES + 1))
        );
        assert_eq!(
            WorkspacePath::parse(&"a".repeat(MAX_COMPONENT_BYTES + 1)),
            Err(PathError::ComponentTooLong)
        );
        assert_eq!(
            WorkspacePath::parse(&["d"; MAX_DEPTH + 1].join("/")),
            Err(PathError::TooDeep)
        );
    }

    #[test]
    fn extension_is_lowercased_and_ignores_dotfiles() {
        let ext = |p: &str| WorkspacePath::parse(p).ok().and_then(|p| p.extension());
        assert_eq!(ext("src/Main.PY"), Some("py".into()));
        assert_eq!(ext("a.b/.bashrc"), None);
        assert_eq!(ext("Makefile"), None);
    }

    proptest! {
        #[test]
        fn accepted_paths_never_escape_the_workspace(raw in "[a-z./\\\\\\x00]{0,20}") {
            if let Ok(p) = WorkspacePath::parse(&raw) {
                let s = p.as_str();
                prop_assert!(!s.starts_with('/'));
                prop_assert!(s.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
                prop_assert!(!s.contains('\0') && !s.contains('\\'));
            }
        }
    }
}
