//! Linked folders: a workspace as plain files on disk, kept in sync both
//! ways (ARCHITECTURE section 11, `docs/folders.md`).
//!
//! Each linked folder has one thread running one task. Watcher events
//! (inotify, through `notify`) are hints: the truth is a comparison of three
//! things per path — the file on disk, the workspace's file, and the record
//! of what was last synced between them (stored with the changes it made,
//! `store::folders`). A save on disk becomes the character edits from that
//! record's content, merged over whatever the workspace got since; a change
//! in the workspace is written to disk atomically, never over an edit the
//! folder has not taken in yet. Bursts are debounced into batches (one
//! commit for a `git checkout`); a full comparison runs at start, after a
//! watcher overflow and periodically.
//!
//! Costs: a change to one file costs O(size of that file + log files);
//! only the periodic and start-up comparisons look at every file.

pub mod disk;
pub mod editors;
mod ignores;
mod task;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use xencode_protocol::WorkspaceId;
use xencode_protocol::api::{FolderInfo, FolderOutcome, FolderState};

use crate::store::folders::FolderLink;
use crate::store::{Store, StoreError};
use editors::{Cursor, Editors, EditorsError, Save};
use task::Task;

/// Tunables of linked folders.
#[derive(Debug, Clone)]
pub struct FolderOptions {
    /// Files over this many bytes are stored whole (no character merges).
    pub max_text_bytes: u64,
    /// Files over this many bytes are not synced (and listed as skipped).
    pub max_file_bytes: u64,
    /// How often every file is compared, whatever the watcher said.
    pub rescan_every: Duration,
    /// A burst of changes is taken in once it has been quiet this long...
    pub quiet: Duration,
    /// ...or once its first change is this old.
    pub max_delay: Duration,
    /// The node's data directory: never linked, never inside a link.
    pub data_dir: PathBuf,
}

impl Default for FolderOptions {
    fn default() -> Self {
        Self {
            max_text_bytes: 1 << 20,
            max_file_bytes: 8 << 20,
            rescan_every: Duration::from_secs(60),
            quiet: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            data_dir: PathBuf::new(),
        }
    }
}

/// Why a folder request failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FolderError {
    #[error("{0}: give an absolute directory path")]
    NotAbsolute(String),
    #[error("{0} is not a directory")]
    NotADirectory(String),
    #[error("cannot use {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{dir} and the node's data directory {data} overlap: link a folder that neither holds nor lies inside the data directory"
    )]
    DataDir { dir: String, data: String },
    #[error("{0} is not a linked folder (see `xencode folder list`)")]
    NotLinked(String),
    #[error(
        "{0} is not receive-only: local edits there are already shared, there is nothing to revert"
    )]
    NotReceiveOnly(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the folder's task stopped; restart the node")]
    Stopped,
}

enum Control {
    Revert(oneshot::Sender<Result<FolderOutcome, FolderError>>),
    /// Editors closed these files: compare them again.
    Recheck(Vec<String>),
    Stop,
}

struct Running {
    status: Arc<Mutex<FolderInfo>>,
    control: mpsc::Sender<Control>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The linked folders of a node.
#[derive(Clone)]
pub struct Folders {
    store: Store,
    options: FolderOptions,
    running: Arc<tokio::sync::Mutex<BTreeMap<String, Running>>>,
    editors: Arc<Editors>,
    /// Ends the editor-lease task at `stop` (it holds a store handle, which
    /// would keep the store open, and the node's shutdown waiting, until
    /// its next tick).
    stopping: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Folders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Folders").finish_non_exhaustive()
    }
}

impl Folders {
    /// Starts syncing every folder linked in the store.
    pub async fn start(store: Store, options: FolderOptions) -> Result<Self, StoreError> {
        let folders = Self {
            store,
            options,
            running: Arc::default(),
            editors: Arc::default(),
            stopping: Arc::default(),
        };
        // Editor sessions that stopped renewing give their files back.
        let weak = Arc::downgrade(&folders.running);
        let editors = Arc::clone(&folders.editors);
        let store = folders.store.clone();
        let stopping = Arc::clone(&folders.stopping);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stopping.notified() => break,
                }
                let Some(running) = weak.upgrade() else { break };
                let closed = editors.expire();
                if !closed.is_empty() {
                    let touched: BTreeSet<WorkspaceId> = closed.iter().map(|(ws, _)| *ws).collect();
                    tell_presence(&store, &editors, touched).await;
                    recheck(&running, closed).await;
                }
            }
        });
        for link in folders.store.folder_links().await? {
            let name = folders.workspace_name(link.workspace).await;
            folders.spawn(link, name).await;
        }
        Ok(folders)
    }

    async fn workspace_name(&self, ws: WorkspaceId) -> String {
        self.store
            .workspace(ws)
            .await
            .map(|d| d.summary.name)
            .unwrap_or_default()
    }

    /// Every linked folder, sorted by directory.
    pub async fn list(&self) -> Vec<FolderInfo> {
        // Names as they are now (a joined workspace learns its name by sync).
        let names: BTreeMap<WorkspaceId, String> = self
            .store
            .list_workspaces()
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|w| (w.id, w.name))
            .collect();
        let running = self.running.lock().await;
        running
            .values()
            .filter_map(|r| r.status.lock().ok().map(|s| s.clone()))
            .map(|mut f| {
                if let Some(n) = names.get(&f.workspace) {
                    f.workspace_name.clone_from(n);
                }
                f
            })
            .collect()
    }

    /// Links `dir` to `workspace`, or to a new workspace named `name` (or
    /// after the directory) made from it. The first comparison runs in the
    /// background: `list` shows its progress.
    pub async fn link(
        &self,
        dir: &str,
        workspace: Option<WorkspaceId>,
        name: Option<String>,
    ) -> Result<FolderInfo, FolderError> {
        let dir = self.check_dir(dir)?;
        let ws = match workspace {
            Some(ws) => {
                self.store.workspace(ws).await?;
                ws
            }
            None => {
                let name = name.unwrap_or_else(|| {
                    Path::new(&dir)
                        .file_name()
                        .and_then(|n| n.to_str())
                        .unwrap_or("folder")
                        .to_owned()
                });
                self.store.create_workspace(name, crate::now_ms()).await?.id
            }
        };
        let link = FolderLink {
            dir: dir.clone(),
            workspace: ws,
            linked_at: crate::now_ms(),
        };
        self.store.link_folder(link.clone()).await?;
        let name = self.workspace_name(ws).await;
        let status = self.spawn(link, name).await;
        let info = status
            .lock()
            .map(|s| s.clone())
            .map_err(|_| FolderError::Stopped)?;
        Ok(info)
    }

    /// An absolute, existing (created if missing), canonical directory that
    /// does not overlap the data directory.
    fn check_dir(&self, dir: &str) -> Result<String, FolderError> {
        let path = Path::new(dir);
        if !path.is_absolute() {
            return Err(FolderError::NotAbsolute(dir.to_owned()));
        }
        let io = |source| FolderError::Io {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(path).map_err(io)?;
        let canonical = std::fs::canonicalize(path).map_err(io)?;
        if !canonical.is_dir() {
            return Err(FolderError::NotADirectory(dir.to_owned()));
        }
        let data = std::fs::canonicalize(&self.options.data_dir)
            .unwrap_or_else(|_| self.options.data_dir.clone());
        if !data.as_os_str().is_empty()
            && (canonical.starts_with(&data) || data.starts_with(&canonical))
        {
            return Err(FolderError::DataDir {
                dir: canonical.display().to_string(),
                data: data.display().to_string(),
            });
        }
        canonical.to_str().map(str::to_owned).ok_or_else(|| {
            FolderError::NotADirectory(format!("{} (not UTF-8)", canonical.display()))
        })
    }

    async fn spawn(&self, link: FolderLink, workspace_name: String) -> Arc<Mutex<FolderInfo>> {
        let status = Arc::new(Mutex::new(FolderInfo {
            dir: link.dir.clone(),
            workspace: link.workspace,
            workspace_name,
            state: FolderState::Scanning,
            files: 0,
            scanned: 0,
            scan_total: 0,
            pending: 0,
            receive_only: false,
            local_changes: Vec::new(),
            whole_files: 0,
            skipped: Vec::new(),
            last_sync: None,
            errors: Vec::new(),
        }));
        let (control, control_rx) = mpsc::channel(8);
        let task = Task::new(
            self.store.clone(),
            link.clone(),
            self.options.clone(),
            Arc::clone(&status),
            Arc::clone(&self.editors),
        );
        let thread = std::thread::Builder::new()
            .name("xencode-folder".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => rt.block_on(task.run(control_rx)),
                    Err(e) => tracing::error!(error = %e, "cannot start a folder's runtime"),
                }
            })
            .map_err(|e| tracing::error!(error = %e, "cannot start a folder's thread"))
            .ok();
        self.running.lock().await.insert(
            link.dir,
            Running {
                status: Arc::clone(&status),
                control,
                thread,
            },
        );
        status
    }

    /// Stops syncing `dir` and forgets its link; the files stay.
    pub async fn unlink(&self, dir: &str) -> Result<FolderOutcome, FolderError> {
        let key = self.known(dir).await?;
        if let Some(r) = self.running.lock().await.remove(&key) {
            stop(r).await;
        }
        let removed = self.store.unlink_folder(key.clone()).await?;
        let _ = std::fs::remove_dir_all(Path::new(&key).join(".xencode"));
        Ok(FolderOutcome {
            dir: key,
            changed: usize::from(removed),
            kept: Vec::new(),
        })
    }

    /// Unlinks every folder of `workspace` (before the node forgets it);
    /// the files stay. Returns how many.
    pub async fn unlink_workspace(&self, workspace: WorkspaceId) -> Result<usize, FolderError> {
        let dirs: Vec<String> = self
            .running
            .lock()
            .await
            .iter()
            .filter(|(_, r)| r.status.lock().is_ok_and(|s| s.workspace == workspace))
            .map(|(dir, _)| dir.clone())
            .collect();
        for dir in &dirs {
            self.unlink(dir).await?;
        }
        Ok(dirs.len())
    }

    /// On a receive-only folder, puts the workspace's version back over
    /// every local edit.
    pub async fn revert(&self, dir: &str) -> Result<FolderOutcome, FolderError> {
        let key = self.known(dir).await?;
        let control = self
            .running
            .lock()
            .await
            .get(&key)
            .map(|r| r.control.clone())
            .ok_or_else(|| FolderError::NotLinked(key.clone()))?;
        let (tx, rx) = oneshot::channel();
        control
            .send(Control::Revert(tx))
            .await
            .map_err(|_| FolderError::Stopped)?;
        rx.await.map_err(|_| FolderError::Stopped)?
    }

    /// An editor session (`xencode lsp`) holds `open` of `workspace` open,
    /// with its cursor at `cursors`, and wrote `saves` (see [`editors`]);
    /// renewed within [`editors::LEASE`] or it lapses. Teammates hear what
    /// this node has open.
    pub async fn editing(
        &self,
        session: &str,
        workspace: WorkspaceId,
        open: std::collections::BTreeSet<String>,
        saves: Vec<(String, Save)>,
        cursors: Vec<(String, Cursor)>,
    ) -> Result<Duration, EditorsError> {
        let closed = self
            .editors
            .update(session, workspace, open, saves, cursors)?;
        tell_presence(&self.store, &self.editors, [workspace]).await;
        if !closed.is_empty() {
            recheck(&self.running, closed).await;
        }
        Ok(editors::LEASE)
    }

    /// The key of a linked folder named by `dir` (canonicalized if it exists).
    async fn known(&self, dir: &str) -> Result<String, FolderError> {
        let running = self.running.lock().await;
        if running.contains_key(dir) {
            return Ok(dir.to_owned());
        }
        let canonical = std::fs::canonicalize(dir)
            .ok()
            .and_then(|p| p.to_str().map(str::to_owned));
        match canonical {
            Some(c) if running.contains_key(&c) => Ok(c),
            _ => Err(FolderError::NotLinked(dir.to_owned())),
        }
    }

    /// Stops every folder task (at shutdown).
    pub async fn stop(&self) {
        self.stopping.notify_one();
        let all: Vec<Running> = std::mem::take(&mut *self.running.lock().await)
            .into_values()
            .collect();
        for r in all {
            stop(r).await;
        }
    }
}

/// Tells the store what this node has open in `workspaces`, for its
/// teammates.
async fn tell_presence(
    store: &Store,
    editors: &Editors,
    workspaces: impl IntoIterator<Item = WorkspaceId>,
) {
    for ws in workspaces {
        let files = editors
            .presence(ws)
            .into_iter()
            .map(|(path, c)| crate::store::OpenHere {
                path,
                cursor: c.map(|c| (c.offset, c.heads)),
            })
            .collect();
        if let Err(e) = store.set_presence(ws, files).await {
            tracing::debug!(%ws, error = %e, "presence not told");
        }
    }
}

/// Asks the folders of each workspace to compare files editors closed.
async fn recheck(
    running: &tokio::sync::Mutex<BTreeMap<String, Running>>,
    closed: Vec<(WorkspaceId, String)>,
) {
    let mut by_ws: BTreeMap<WorkspaceId, Vec<String>> = BTreeMap::new();
    for (ws, p) in closed {
        by_ws.entry(ws).or_default().push(p);
    }
    let targets: Vec<(mpsc::Sender<Control>, Vec<String>)> = {
        let running = running.lock().await;
        running
            .values()
            .filter_map(|r| {
                let ws = r.status.lock().ok()?.workspace;
                Some((r.control.clone(), by_ws.get(&ws)?.clone()))
            })
            .collect()
    };
    for (control, paths) in targets {
        let _ = control.send(Control::Recheck(paths)).await;
    }
}

async fn stop(mut r: Running) {
    let _ = r.control.send(Control::Stop).await;
    if let Some(t) = r.thread.take() {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
}
