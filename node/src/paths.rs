//! Where a node keeps its files inside the data directory.

use std::path::{Path, PathBuf};

/// The files of one data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Wraps a data directory path (it need not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The default: `$XDG_DATA_HOME/xencode` (or the platform's equivalent).
    pub fn default_root() -> Option<PathBuf> {
        dirs::data_dir().map(|d| d.join("xencode"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The node's ed25519 secret key (0600).
    pub fn identity_key(&self) -> PathBuf {
        self.root.join("identity.key")
    }
    /// The bearer token of the local API (0600), the bare token only.
    pub fn api_token(&self) -> PathBuf {
        self.root.join("api-token")
    }
    /// The URL the running node's API actually bound, written once it is ready.
    pub fn api_url(&self) -> PathBuf {
        self.root.join("api-url")
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// The redb store.
    pub fn store(&self) -> PathBuf {
        self.root.join("xencode.redb")
    }
}
