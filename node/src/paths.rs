//! Where a node keeps its files inside the data directory, and how files
//! holding workspace content or tokens are kept private (0600 files in a
//! 0700 directory).

use std::fs;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `path` empty, readable and writable by its owner only, unless it
/// exists; either way it ends up 0600. For files other programs (redb)
/// then fill: they would otherwise be created with the umask's mode.
pub fn ensure_private_file(path: &Path) -> io::Result<()> {
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600))
        }
        Err(e) => Err(e),
    }
}

/// Opens a new file (truncating one left over) readable by its owner only.
pub fn create_private_file(path: &Path) -> io::Result<fs::File> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

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
