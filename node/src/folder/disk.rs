//! The folder's side of the disk: reading a file with its stamp, writing
//! one atomically without clobbering a local edit, deleting one, all
//! without following symlinks or leaving the folder.
//!
//! A write is a temporary file in the target's directory, synced, given its
//! mode, then renamed over the target. Just before the rename the target is
//! checked against what was last synced; an edit saved after that check and
//! before the rename (microseconds) is the one window left, stated in
//! `docs/folders.md`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::store::folders::DiskStamp;

/// Prefix of the temporary files of atomic writes (never synced).
pub const TMP_PREFIX: &str = ".xencode-tmp-";
/// Mode of files the workspace never gave one.
pub const DEFAULT_MODE: u32 = 0o644;

/// Why a path cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "{path}: {what} is in the way (symlinks and special files are never followed or replaced)"
    )]
    InTheWay { path: String, what: &'static str },
    #[error("{path}: {size} bytes is over the {limit}-byte limit for synced files")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl DiskError {
    fn io(path: &Path, source: io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// What kind of thing sits at a path.
fn what(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "a symlink"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a file"
    } else {
        "a special file"
    }
}

/// The stamp of a regular file's metadata (without its content hash).
pub fn stamp_of(meta: &fs::Metadata, hash: [u8; 32]) -> DiskStamp {
    DiskStamp {
        size: meta.len(),
        mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
        ino: meta.ino(),
        mode: meta.mode() & 0o7777,
        hash,
    }
}

/// A regular file's metadata, not following a symlink; `None` if nothing
/// is there.
pub fn lstat(path: &Path) -> Result<Option<fs::Metadata>, DiskError> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DiskError::io(path, e)),
    }
}

/// Reads a regular file (refusing anything else and anything over `limit`)
/// with the stamp of what was read.
pub fn read(path: &Path, limit: u64) -> Result<Option<(Vec<u8>, DiskStamp)>, DiskError> {
    let Some(before) = lstat(path)? else {
        return Ok(None);
    };
    if !before.file_type().is_file() {
        return Err(DiskError::InTheWay {
            path: path.display().to_string(),
            what: what(&before),
        });
    }
    if before.len() > limit {
        return Err(DiskError::TooLarge {
            path: path.display().to_string(),
            size: before.len(),
            limit,
        });
    }
    let mut f = match OpenOptions::new()
        .read(true)
        .custom_flags(libc_nofollow())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DiskError::io(path, e)),
    };
    let mut bytes = Vec::with_capacity(before.len() as usize);
    (&mut f)
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| DiskError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(DiskError::TooLarge {
            path: path.display().to_string(),
            size: bytes.len() as u64,
            limit,
        });
    }
    let meta = f.metadata().map_err(|e| DiskError::io(path, e))?;
    let hash = *blake3::hash(&bytes).as_bytes();
    Ok(Some((bytes, stamp_of(&meta, hash))))
}

/// `O_NOFOLLOW`: opening a symlink fails instead of following it.
fn libc_nofollow() -> i32 {
    libc::O_NOFOLLOW
}

/// Whether the file at `path` is still what `expect` says (or absent when
/// `expect` is `None`), reading it only when its metadata changed.
pub fn unchanged(path: &Path, expect: Option<&DiskStamp>, limit: u64) -> Result<bool, DiskError> {
    let meta = lstat(path)?;
    match (meta, expect) {
        (None, None) => Ok(true),
        (None, Some(_)) | (Some(_), None) => Ok(false),
        (Some(m), Some(e)) => {
            if !m.file_type().is_file() {
                return Ok(false);
            }
            if stamp_of(&m, e.hash).same_stat(e) {
                return Ok(true);
            }
            Ok(read(path, limit)?.is_some_and(|(_, s)| s.hash == e.hash))
        }
    }
}

/// Makes sure every directory on the way to `rel` inside `root` is a real
/// directory (creating missing ones), never a symlink.
fn parent_dirs(root: &Path, rel: &str) -> Result<PathBuf, DiskError> {
    let mut dir = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        dir.push(part);
        match lstat(&dir)? {
            Some(m) if m.file_type().is_dir() => {}
            Some(m) => {
                return Err(DiskError::InTheWay {
                    path: dir.display().to_string(),
                    what: what(&m),
                });
            }
            None => match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(DiskError::io(&dir, e)),
            },
        }
    }
    Ok(dir)
}

/// The outcome of a write.
#[derive(Debug)]
pub enum Written {
    /// The file now holds the bytes; its stamp.
    Done(DiskStamp),
    /// The file changed on disk since it was last synced: nothing was
    /// written; take the local edit in first.
    LocalEdit,
}

/// A file written to its temporary name, waiting for [`commit`].
#[derive(Debug)]
pub struct Prepared {
    tmp: PathBuf,
    target: PathBuf,
    file: File,
    hash: [u8; 32],
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // Committed: the temporary name is gone and this does nothing.
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Writes `bytes` with `mode` to a temporary file beside `root/rel`,
/// unless the file is no longer what was last synced (`expect`; `None`: no
/// file expected): then `Ok(Err(Written::LocalEdit))`, or `Ok(Err(Done))`
/// if an unknown file there already holds exactly these bytes.
pub fn prepare(
    root: &Path,
    rel: &str,
    bytes: &[u8],
    mode: u32,
    expect: Option<&DiskStamp>,
    limit: u64,
) -> Result<Result<Prepared, Written>, DiskError> {
    let dir = parent_dirs(root, rel)?;
    let target = root.join(rel);
    if let Some(m) = lstat(&target)?
        && !m.file_type().is_file()
    {
        return Err(DiskError::InTheWay {
            path: target.display().to_string(),
            what: what(&m),
        });
    }
    if !unchanged(&target, expect, limit)? {
        // A file we did not know of that already holds these bytes is
        // simply synced; anything else is a local edit.
        if expect.is_none()
            && let Some((have, stamp)) = read(&target, limit)?
            && have == bytes
        {
            return Ok(Err(Written::Done(stamp)));
        }
        return Ok(Err(Written::LocalEdit));
    }
    let tmp = dir.join(format!("{TMP_PREFIX}{}", random_suffix()));
    let made = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_nofollow())
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))?;
        Ok::<File, io::Error>(f)
    })();
    match made {
        Ok(file) => Ok(Ok(Prepared {
            tmp,
            target,
            file,
            hash: *blake3::hash(bytes).as_bytes(),
        })),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(DiskError::io(&target, e))
        }
    }
}

/// Makes prepared files durable before they are renamed into place. A few
/// files: each one's own `fdatasync`, several at once so that the journal
/// commits them together (a whole-file-system sync would also wait for
/// unrelated writers, such as a build in the same file system). A batch of
/// [`SYNCFS_FROM`] files or more (a `git checkout` on a teammate's disk):
/// one `syncfs` per file system they are on, which costs a fraction of as
/// many `fdatasync`s (1,000 new files here: 10–45 ms against 90–170 ms).
pub fn flush(files: &[Prepared]) -> Result<(), DiskError> {
    const THREADS: usize = 8;
    if files.is_empty() {
        return Ok(());
    }
    if files.len() >= SYNCFS_FROM {
        return syncfs_each(files);
    }
    let per_thread = files.len().div_ceil(THREADS);
    std::thread::scope(|s| {
        let workers: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| {
                s.spawn(move || {
                    for p in chunk {
                        p.file
                            .sync_data()
                            .map_err(|e| DiskError::io(&p.target, e))?;
                    }
                    Ok::<(), DiskError>(())
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(r) => r?,
                Err(_) => {
                    return Err(DiskError::Io {
                        path: String::new(),
                        source: io::Error::other("a sync thread panicked"),
                    });
                }
            }
        }
        Ok(())
    })
}

/// Files per batch from which [`flush`] syncs whole file systems.
const SYNCFS_FROM: usize = 64;

/// `syncfs` once for each file system the files are on.
fn syncfs_each(files: &[Prepared]) -> Result<(), DiskError> {
    let mut done = std::collections::BTreeSet::new();
    for p in files {
        let dev = p
            .file
            .metadata()
            .map_err(|e| DiskError::io(&p.target, e))?
            .dev();
        if done.insert(dev) {
            rustix::fs::syncfs(&p.file).map_err(|e| DiskError::io(&p.target, e.into()))?;
        }
    }
    Ok(())
}

/// Renames a prepared (and flushed) file over its target, unless the
/// target changed since it was last synced (`expect`).
pub fn commit(p: Prepared, expect: Option<&DiskStamp>, limit: u64) -> Result<Written, DiskError> {
    // The last check before the rename: the window left is from here to
    // the rename below.
    if !unchanged(&p.target, expect, limit)? {
        return Ok(Written::LocalEdit);
    }
    fs::rename(&p.tmp, &p.target).map_err(|e| DiskError::io(&p.target, e))?;
    let meta = p.file.metadata().map_err(|e| DiskError::io(&p.target, e))?;
    Ok(Written::Done(stamp_of(&meta, p.hash)))
}

/// Writes `bytes` to `root/rel` atomically and durably with `mode`, unless
/// the file is no longer what was last synced (`expect`; `None`: no file
/// expected).
pub fn write(
    root: &Path,
    rel: &str,
    bytes: &[u8],
    mode: u32,
    expect: Option<&DiskStamp>,
    limit: u64,
) -> Result<Written, DiskError> {
    let p = match prepare(root, rel, bytes, mode, expect, limit)? {
        Ok(p) => p,
        Err(done_or_edit) => return Ok(done_or_edit),
    };
    p.file
        .sync_data()
        .map_err(|e| DiskError::io(&p.target, e))?;
    commit(p, expect, limit)
}

/// Deletes `root/rel` if it is still what was last synced, then any
/// directories left empty on the way up (never `root`). Returns whether the
/// file was deleted (`false`: it was edited locally; keep it).
pub fn delete(root: &Path, rel: &str, expect: &DiskStamp, limit: u64) -> Result<bool, DiskError> {
    let target = root.join(rel);
    if lstat(&target)?.is_none() {
        return Ok(true);
    }
    if !unchanged(&target, Some(expect), limit)? {
        return Ok(false);
    }
    match fs::remove_file(&target) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(DiskError::io(&target, e)),
    }
    let mut dir = target.parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        if d == root || !d.starts_with(root) || fs::remove_dir(&d).is_err() {
            break;
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    Ok(true)
}

fn random_suffix() -> String {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // Unique enough within one process: the time and a counter.
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        b = (crate::now_ms() ^ N.fetch_add(1, Ordering::Relaxed).rotate_left(32)).to_le_bytes();
    }
    hex::encode(b)
}

/// Whether the file system under `root` matches names case-insensitively
/// (probed with a file in `root/.xencode/`).
pub fn case_insensitive(root: &Path) -> bool {
    let marker = root.join(".xencode");
    if fs::create_dir_all(&marker).is_err() {
        return false;
    }
    let probe = marker.join("CaseProbe");
    if fs::write(&probe, b"").is_err() {
        return false;
    }
    let folded = lstat(&marker.join("caseprobe")).ok().flatten().is_some();
    let _ = fs::remove_file(&probe);
    folded
}

#[cfg(test)]
mod tests;
