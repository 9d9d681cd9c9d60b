//! The node's identity (one ed25519 key) and the local API token, created on
//! first run and kept in the data directory with mode 0600.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use xencode_protocol::PeerId;

use crate::config::{self, Config};
use crate::paths::DataDir;

const KEY_HEADER: &str = "xencode-ed25519-secret-v1";

/// Errors while creating or loading the identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error(
        "the data directory {path} is readable by other users and cannot be made private (0700): {source}. Run `chmod 700` on it as its owner, or choose another --data-dir"
    )]
    NotPrivate { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error(
        "{path} is not a xencode identity key ({why}); move it away and run `xencode init` to make a new one"
    )]
    Malformed { path: PathBuf, why: &'static str },
    #[error(
        "no identity in {dir}: run `xencode init` (or `xencode node`, which initializes on first run)"
    )]
    Missing { dir: PathBuf },
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
}

/// The node's keypair.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.peer_id())
    }
}

impl Identity {
    /// Wraps a secret key.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// A new random identity.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut secret = [0u8; 32];
        random_fill(&mut secret)?;
        Ok(Self::from_secret(secret))
    }

    /// The ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// The secret key bytes (for libp2p and biscuit, which take raw bytes).
    pub fn secret_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The libp2p peer id derived from the public key.
    pub fn peer_id(&self) -> PeerId {
        // An ed25519 public key taken from a valid signing key always converts.
        match xencode_protocol::ids::peer_id_of(&self.public_key()) {
            Ok(p) => p,
            Err(_) => unreachable!("a dalek verifying key is a valid ed25519 point"),
        }
    }

    /// Loads the identity of a data directory.
    pub fn load(dir: &DataDir) -> Result<Self, IdentityError> {
        let path = dir.identity_key();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(IdentityError::Missing {
                    dir: dir.root().to_owned(),
                });
            }
            Err(source) => return Err(IdentityError::Read { path, source }),
        };
        warn_if_readable_by_others(&path);
        let mut lines = text.lines();
        if lines.next() != Some(KEY_HEADER) {
            return Err(IdentityError::Malformed {
                path,
                why: "missing header line",
            });
        }
        let hex_key = lines.next().unwrap_or_default().trim();
        let mut secret = [0u8; 32];
        hex::decode_to_slice(hex_key, &mut secret).map_err(|_| IdentityError::Malformed {
            path: path.clone(),
            why: "the key is not 64 hex digits",
        })?;
        Ok(Self::from_secret(secret))
    }
}

/// What `init` did.
#[derive(Debug)]
pub struct Initialized {
    pub identity: Identity,
    /// False when the data directory was already initialized.
    pub created: bool,
}

/// Creates the data directory, identity key, API token and config file where
/// missing; leaves existing ones untouched. Idempotent.
pub fn init(dir: &DataDir) -> Result<Initialized, IdentityError> {
    create_private_dir(dir.root())?;
    let key_path = dir.identity_key();
    let created = !key_path.exists();
    if created {
        let id = Identity::generate()?;
        let body = format!("{KEY_HEADER}\n{}\n", hex::encode(id.secret_bytes()));
        write_private(&key_path, body.as_bytes())?;
    }
    if !dir.api_token().exists() {
        let mut token = [0u8; 32];
        random_fill(&mut token)?;
        write_private(&dir.api_token(), hex::encode(token).as_bytes())?;
    }
    if !dir.config().exists() {
        write_private(&dir.config(), Config::default_file_text().as_bytes())?;
    }
    Ok(Initialized {
        identity: Identity::load(dir)?,
        created,
    })
}

/// Reads the bare API token.
pub fn load_api_token(dir: &DataDir) -> Result<String, IdentityError> {
    let path = dir.api_token();
    match fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_owned()),
        Ok(_) => Err(IdentityError::Malformed {
            path,
            why: "the API token file is empty",
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(IdentityError::Missing {
            dir: dir.root().to_owned(),
        }),
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

pub(crate) fn random_fill(buf: &mut [u8]) -> Result<(), IdentityError> {
    getrandom::fill(buf).map_err(|e| IdentityError::Random(e.to_string()))
}

/// Creates the data directory 0700, or tightens an existing one to 0700:
/// it holds the identity key, the API token and the store with every
/// workspace's content. A directory this user cannot tighten is refused.
pub(crate) fn create_private_dir(path: &Path) -> Result<(), IdentityError> {
    fs::create_dir_all(path).map_err(|source| IdentityError::CreateDir {
        path: path.to_owned(),
        source,
    })?;
    let mode = fs::metadata(path)
        .map_err(|source| IdentityError::Read {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|source| {
            IdentityError::NotPrivate {
                path: path.to_owned(),
                source,
            }
        })?;
        tracing::info!(path = %path.display(), "the data directory was readable by others; made it 0700");
    }
    Ok(())
}

/// Writes a new file readable by its owner only; never overwrites.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    let err = |source| IdentityError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    f.sync_all().map_err(err)
}

fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(
            path = %path.display(),
            "the identity key is readable by other users; run `chmod 600` on it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_private_files_once_and_keeps_the_identity() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path().join("home"));
        let first = init(&dir).expect("init");
        assert!(first.created);
        for p in [dir.identity_key(), dir.api_token(), dir.config()] {
            let mode = fs::metadata(&p).expect("exists").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let second = init(&dir).expect("init again");
        assert!(!second.created);
        assert_eq!(first.identity.peer_id(), second.identity.peer_id());
        assert_eq!(load_api_token(&dir).expect("token").len(), 64);
        assert!(first.identity.peer_id().to_string().starts_with("12D3KooW"));
    }

    #[test]
    fn a_damaged_key_file_is_reported_not_replaced() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = DataDir::new(tmp.path());
        fs::write(dir.identity_key(), "garbage").expect("write");
        let err = Identity::load(&dir).expect_err("must fail");
        assert!(matches!(err, IdentityError::Malformed { .. }), "{err}");
        assert!(init(&dir).is_err());
        assert_eq!(
            fs::read_to_string(dir.identity_key()).expect("read"),
            "garbage"
        );
    }
}
