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
mod ignores;

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use xencode_protocol::api::{FileKind, FolderInfo, FolderOutcome, FolderState, NodeEvent};
use xencode_protocol::{WorkspaceId, WorkspacePath};

use crate::store::folders::{DiskOp, DiskStamp, FileRecord, FolderLink, record_of};
use crate::store::{Store, StoreError};
use crate::workspace::folder::{FileHeads, FileState};
use disk::{DiskError, Written};
use ignores::Ignores;

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
        };
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
        let all: Vec<Running> = std::mem::take(&mut *self.running.lock().await)
            .into_values()
            .collect();
        for r in all {
            stop(r).await;
        }
    }
}

async fn stop(mut r: Running) {
    let _ = r.control.send(Control::Stop).await;
    if let Some(t) = r.thread.take() {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
}

/// What the watcher tells the task.
enum FsEvent {
    /// Something changed at this path (written and closed, created,
    /// renamed, removed, its mode changed).
    Changed(PathBuf),
    /// A file is being written: taken in when it is closed (or, for a
    /// writer that keeps it open, after [`WRITE_TIMEOUT`]), never half-written.
    Writing(PathBuf),
    Rescan,
}

/// How long a file written without being closed waits before it is read.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// What a watcher event means for the folder (reads mean nothing).
fn classify(ev: notify::Event) -> Vec<FsEvent> {
    use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind};
    if ev.need_rescan() {
        return vec![FsEvent::Rescan];
    }
    let writing = match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        EventKind::Access(_) => return Vec::new(),
        EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_)) => true,
        _ => false,
    };
    ev.paths
        .into_iter()
        .map(|p| {
            if writing {
                FsEvent::Writing(p)
            } else {
                FsEvent::Changed(p)
            }
        })
        .collect()
}

/// Ops per ingest commit, and bytes.
const OPS_PER_COMMIT: usize = 512;
const BYTES_PER_COMMIT: usize = 32 << 20;
/// Watcher events queued before the queue counts as overflowed.
const EVENT_QUEUE: usize = 8192;
/// Errors kept for `folder list`.
const MAX_ERRORS: usize = 20;
/// Skipped entries listed (the rest are counted).
const MAX_SKIPPED: usize = 50;

/// Where a path stands on one side.
struct Seen {
    bytes: Vec<u8>,
    stamp: DiskStamp,
}

/// What one comparison decided.
#[derive(Default)]
struct Plan {
    ops: Vec<DiskOp>,
    /// Write the workspace's version, expecting this on disk.
    to_disk: Vec<(String, Option<DiskStamp>)>,
    /// Delete from disk (expected stamp).
    to_delete: Vec<(String, DiskStamp)>,
    /// Records to save (stamp refreshed) or drop.
    records: Vec<(String, Option<FileRecord>)>,
    /// Receive-only: local edits not sent.
    local: Vec<String>,
}

struct Task {
    store: Store,
    link: FolderLink,
    root: PathBuf,
    options: FolderOptions,
    status: Arc<Mutex<FolderInfo>>,
    records: BTreeMap<String, FileRecord>,
    ignores: Ignores,
    local_changes: BTreeSet<String>,
    whole: BTreeSet<String>,
    skipped: Vec<String>,
    errors: VecDeque<String>,
    watched: HashSet<String>,
    watcher: Option<notify::RecommendedWatcher>,
    overflow: Arc<AtomicBool>,
    case_insensitive: bool,
    receive_only: bool,
    last_sync: Option<u64>,
    /// Directories watched only after they were walked: files made in them
    /// in between sent no event, so they are walked again.
    followup: BTreeSet<String>,
    /// Whether the first full comparison is done (`scanning` until then).
    synced_once: bool,
    /// Files being written right now: left alone until they are closed.
    busy: BTreeSet<String>,
}

impl Task {
    fn new(
        store: Store,
        link: FolderLink,
        options: FolderOptions,
        status: Arc<Mutex<FolderInfo>>,
    ) -> Self {
        let root = PathBuf::from(&link.dir);
        Self {
            store,
            ignores: Ignores::new(&root),
            root,
            link,
            options,
            status,
            records: BTreeMap::new(),
            local_changes: BTreeSet::new(),
            whole: BTreeSet::new(),
            skipped: Vec::new(),
            errors: VecDeque::new(),
            watched: HashSet::new(),
            watcher: None,
            overflow: Arc::new(AtomicBool::new(false)),
            case_insensitive: false,
            receive_only: false,
            last_sync: None,
            followup: BTreeSet::new(),
            synced_once: false,
            busy: BTreeSet::new(),
        }
    }

    fn error(&mut self, e: impl std::fmt::Display) {
        let msg = e.to_string();
        tracing::warn!(dir = %self.link.dir, error = %msg, "folder");
        self.errors.push_back(msg);
        while self.errors.len() > MAX_ERRORS {
            self.errors.pop_front();
        }
    }

    fn publish(&self, state: FolderState, pending: usize) {
        if let Ok(mut s) = self.status.lock() {
            s.state = state;
            s.files = self.records.len();
            s.pending = pending;
            s.receive_only = self.receive_only;
            s.local_changes = self.local_changes.iter().cloned().collect();
            s.whole_files = self.whole.len();
            s.skipped = self.skipped.clone();
            s.last_sync = self.last_sync;
            s.errors = self.errors.iter().cloned().collect();
        }
    }

    fn progress(&self, scanned: usize, total: usize) {
        if let Ok(mut s) = self.status.lock() {
            s.scanned = scanned;
            s.scan_total = total;
        }
    }

    async fn run(mut self, mut control: mpsc::Receiver<Control>) {
        let (fs_tx, mut fs_rx) = mpsc::channel(EVENT_QUEUE);
        self.start_watcher(fs_tx);
        let mut events = self.store.subscribe();
        self.write_marker();
        self.case_insensitive = disk::case_insensitive(&self.root);
        match self.store.folder_records(self.link.dir.clone()).await {
            Ok(r) => self.records = r,
            Err(e) => self.error(format!("cannot read the folder's records: {e}")),
        }
        self.reconcile(None).await;
        let mut rescan = tokio::time::interval(self.options.rescan_every);
        rescan.reset();
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        let mut full = false;
        let mut index_changed = false;
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        // Files being written, since when.
        let mut writing: BTreeMap<String, Instant> = BTreeMap::new();
        loop {
            let due = first.map(|f| (last + self.options.quiet).min(f + self.options.max_delay));
            let stale = writing.values().min().map(|t| *t + WRITE_TIMEOUT);
            let wake = match (due, stale) {
                (Some(d), Some(s)) => d.min(s),
                (Some(t), None) | (None, Some(t)) => t,
                (None, None) => Instant::now() + Duration::from_secs(3600),
            };
            tokio::select! {
                ev = fs_rx.recv() => match ev {
                    Some(FsEvent::Writing(p)) => {
                        if let Some(rel) = self.relative(&p) {
                            writing.entry(rel).or_insert_with(Instant::now);
                        }
                    }
                    Some(FsEvent::Changed(p)) => {
                        if let Some(rel) = self.relative(&p) {
                            if ignores::IGNORE_FILES.iter().any(|n| rel == *n || rel.ends_with(&format!("/{n}"))) {
                                full = true;
                            }
                            writing.remove(&rel);
                            dirty.insert(rel);
                        }
                        last = Instant::now();
                        first.get_or_insert(last);
                    }
                    Some(FsEvent::Rescan) => {
                        full = true;
                        first.get_or_insert(Instant::now());
                    }
                    None => {}
                },
                ev = events.recv() => {
                    match ev {
                        Ok(NodeEvent::FileChanged { workspace, path, .. }) if workspace == self.link.workspace => {
                            dirty.insert(path);
                        }
                        Ok(NodeEvent::IndexChanged { workspace, .. } | NodeEvent::AccessChanged { workspace, .. })
                            if workspace == self.link.workspace => index_changed = true,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => full = true,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                    last = Instant::now();
                    first.get_or_insert(last);
                }
                _ = rescan.tick() => {
                    full = true;
                    first.get_or_insert(Instant::now());
                }
                c = control.recv() => match c {
                    Some(Control::Revert(reply)) => {
                        let r = self.revert().await;
                        let _ = reply.send(r);
                        continue;
                    }
                    Some(Control::Stop) | None => break,
                },
                _ = tokio::time::sleep_until(wake), if due.is_some() || stale.is_some() => {
                    // Writers that kept a file open too long: read it anyway.
                    let now = Instant::now();
                    let timed_out: Vec<String> = writing
                        .iter()
                        .filter(|(_, t)| now >= **t + WRITE_TIMEOUT)
                        .map(|(p, _)| p.clone())
                        .collect();
                    for p in timed_out {
                        writing.remove(&p);
                        dirty.insert(p);
                        first.get_or_insert(now);
                    }
                    if first.is_none_or(|f| now < (last + self.options.quiet).min(f + self.options.max_delay)) {
                        continue;
                    }
                    if self.overflow.swap(false, Ordering::Relaxed) {
                        full = true;
                    }
                    if index_changed && !full {
                        dirty.extend(self.index_differences().await);
                    }
                    let scope = (!full).then(|| std::mem::take(&mut dirty));
                    dirty.clear();
                    self.busy = writing.keys().cloned().collect();
                    full = false;
                    index_changed = false;
                    first = None;
                    self.reconcile(scope).await;
                    if !self.followup.is_empty() {
                        dirty.append(&mut self.followup);
                        first = Some(Instant::now());
                    }
                }
            }
            if self.overflow.load(Ordering::Relaxed) {
                first.get_or_insert(Instant::now());
            }
            let pending = dirty.len();
            if let Ok(mut s) = self.status.lock() {
                s.pending = pending;
            }
        }
        self.watcher = None;
        tracing::info!(dir = %self.link.dir, "stopped syncing the folder");
    }

    /// `.xencode/link.json`: which workspace this folder is (nothing secret;
    /// editors' tools find the workspace from it).
    fn write_marker(&mut self) {
        let marker = self.root.join(".xencode");
        let body = serde_json::json!({
            "workspace": self.link.workspace.to_string(),
            "linked_at": self.link.linked_at,
        });
        let r = std::fs::create_dir_all(&marker)
            .and_then(|()| std::fs::write(marker.join("link.json"), body.to_string()));
        if let Err(e) = r {
            self.error(format!("cannot write {}: {e}", marker.display()));
        }
    }

    fn start_watcher(&mut self, tx: mpsc::Sender<FsEvent>) {
        let overflow = Arc::clone(&self.overflow);
        let handler = move |res: notify::Result<notify::Event>| {
            let events: Vec<FsEvent> = match res {
                Ok(ev) => classify(ev),
                Err(_) => vec![FsEvent::Rescan],
            };
            for ev in events {
                if tx.try_send(ev).is_err() {
                    overflow.store(true, Ordering::Relaxed);
                }
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(w) => self.watcher = Some(w),
            Err(e) => self.error(format!(
                "no file watcher ({e}); changes are found by the periodic rescan only"
            )),
        }
    }

    /// Watches `dirs`; returns those newly watched.
    fn watch(&mut self, dirs: &[String]) -> Vec<String> {
        let mut added = Vec::new();
        let mut failed = None;
        if let Some(w) = self.watcher.as_mut() {
            for d in dirs {
                if self.watched.contains(d) {
                    continue;
                }
                let abs = if d.is_empty() {
                    self.root.clone()
                } else {
                    self.root.join(d)
                };
                match w.watch(&abs, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        self.watched.insert(d.clone());
                        added.push(d.clone());
                    }
                    Err(e) => failed = Some(format!("cannot watch {}: {e}", abs.display())),
                }
            }
        }
        if let Some(e) = failed {
            self.error(format!(
                "{e}; raise fs.inotify.max_user_watches, or rely on the periodic rescan"
            ));
        }
        added
    }

    fn relative(&self, p: &Path) -> Option<String> {
        let rel = p.strip_prefix(&self.root).ok()?.to_str()?;
        (!rel.is_empty()).then(|| rel.to_owned())
    }

    /// Paths whose index entry differs from the records (added, removed,
    /// renamed, or another document): O(files), string compares only.
    async fn index_differences(&mut self) -> Vec<String> {
        let index = match self.store.file_index(self.link.workspace).await {
            Ok(i) => i,
            Err(e) => {
                self.error(e);
                return Vec::new();
            }
        };
        let mut out = Vec::new();
        for (path, doc) in &index.by_path {
            if self
                .records
                .get(path.as_str())
                .is_none_or(|r| r.base.doc != *doc)
            {
                out.push(path.to_string());
            }
        }
        for path in self.records.keys() {
            if WorkspacePath::parse(path).is_ok_and(|p| !index.by_path.contains_key(&p)) {
                out.push(path.clone());
            }
        }
        out
    }

    /// Compares disk, workspace and records for `scope` (every path if
    /// `None`) and carries out what differs.
    async fn reconcile(&mut self, scope: Option<BTreeSet<String>>) {
        let full = scope.is_none();
        if full && !self.synced_once {
            self.publish(FolderState::Scanning, 0);
        }
        // 1. The disk.
        let mut errors = Vec::new();
        let mut files: BTreeMap<String, std::fs::Metadata> = BTreeMap::new();
        let mut dirs = Vec::new();
        let mut skipped = Vec::new();
        let prefixes: Vec<String> = match &scope {
            None => {
                let w = ignores::walk(&mut self.ignores, "", &mut errors);
                files = w.files;
                dirs = w.dirs;
                skipped = w.skipped;
                Vec::new()
            }
            Some(paths) => {
                let paths = minimal_prefixes(paths);
                for p in &paths {
                    let abs = self.root.join(p);
                    match disk::lstat(&abs) {
                        Ok(Some(m)) if m.file_type().is_dir() => {
                            if !self.ignores.ignored(p, true) {
                                let w = ignores::walk(&mut self.ignores, p, &mut errors);
                                files.extend(w.files);
                                dirs.extend(w.dirs);
                                skipped.extend(w.skipped);
                            }
                        }
                        Ok(Some(m)) if m.file_type().is_file() => {
                            if !self.ignores.ignored(p, false) && WorkspacePath::parse(p).is_ok() {
                                files.insert(p.clone(), m);
                            }
                        }
                        Ok(_) => {
                            self.watched
                                .retain(|d| d != p && !d.starts_with(&format!("{p}/")));
                        }
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                paths
            }
        };
        for e in errors {
            self.error(e);
        }
        let added = self.watch(&dirs);
        if !full {
            self.followup.extend(added);
        }
        if full {
            self.skipped = skipped;
        } else {
            for s in skipped {
                if !self.skipped.contains(&s) {
                    self.skipped.push(s);
                }
            }
        }
        self.skipped.truncate(MAX_SKIPPED);
        // 2. The workspace.
        let heads = if full {
            self.store.file_heads(self.link.workspace).await
        } else {
            self.store
                .file_heads_under(self.link.workspace, prefixes.clone())
                .await
        };
        let (may_write, heads) = match heads {
            Ok(h) => h,
            Err(e) => {
                self.error(format!("cannot read the workspace: {e}"));
                self.publish(FolderState::Error, 0);
                return;
            }
        };
        self.receive_only = !may_write;
        let ws: BTreeMap<String, FileHeads> =
            heads.into_iter().map(|h| (h.path.to_string(), h)).collect();
        // 3. The records in scope.
        let recorded: Vec<String> = match &scope {
            None => self.records.keys().cloned().collect(),
            Some(_) => prefixes
                .iter()
                .flat_map(|p| {
                    let under = format!("{p}/");
                    self.records
                        .range(p.clone()..)
                        .take_while(|(k, _)| k.starts_with(p.as_str()))
                        .filter(|(k, _)| *k == p || k.starts_with(&under))
                        .map(|(k, _)| k.clone())
                        .collect::<Vec<_>>()
                })
                .collect(),
        };
        let mut all: BTreeSet<String> = files.keys().cloned().collect();
        all.extend(ws.keys().cloned());
        all.extend(recorded);
        if full {
            self.local_changes.clear();
        } else {
            self.local_changes.retain(|p| !all.contains(p));
        }
        let plan = self.plan(&all, &files, &ws);
        self.execute(plan, full && !self.synced_once).await;
        self.synced_once |= full;
        self.publish(FolderState::Watching, 0);
    }

    /// Decides, per path, what to do.
    fn plan(
        &mut self,
        all: &BTreeSet<String>,
        files: &BTreeMap<String, std::fs::Metadata>,
        ws: &BTreeMap<String, FileHeads>,
    ) -> Plan {
        let mut plan = Plan::default();
        let limit = self.options.max_file_bytes;
        let mut new_files: Vec<(WorkspacePath, Seen)> = Vec::new();
        let mut removed: Vec<(WorkspacePath, FileRecord)> = Vec::new();
        for path in all {
            if self.busy.contains(path) {
                continue;
            }
            let rec = self.records.get(path).cloned();
            let on_disk = files.get(path);
            let in_ws = ws.get(path);
            let Ok(wpath) = WorkspacePath::parse(path) else {
                continue;
            };
            let ws_changed = match (in_ws, &rec) {
                (Some(h), Some(r)) => r.base.doc != h.doc || !same_heads(&r.base.heads, &h.heads),
                (Some(_), None) => true,
                _ => false,
            };
            // What is on disk, read only if its metadata moved.
            let mut seen = None;
            let disk_changed = match on_disk {
                None => false,
                Some(meta) => {
                    let known = rec.as_ref().and_then(|r| r.disk);
                    match known {
                        Some(k) if disk::stamp_of(meta, k.hash).same_stat(&k) => false,
                        _ => match disk::read(&self.root.join(path), limit) {
                            Ok(Some((bytes, stamp))) => {
                                let changed = known.is_none_or(|k| k.hash != stamp.hash);
                                if !changed && let Some(r) = &rec {
                                    // Touched, not changed: remember the new stat.
                                    let mut r = r.clone();
                                    r.disk = Some(stamp);
                                    self.records.insert(path.clone(), r.clone());
                                    plan.records.push((path.clone(), Some(r)));
                                }
                                seen = Some(Seen { bytes, stamp });
                                changed
                            }
                            Ok(None) => false,
                            Err(e @ DiskError::TooLarge { .. }) => {
                                let msg = e.to_string();
                                if !self.skipped.contains(&msg) && self.skipped.len() < MAX_SKIPPED
                                {
                                    self.skipped.push(msg);
                                }
                                continue;
                            }
                            Err(e) => {
                                self.error(e);
                                continue;
                            }
                        },
                    }
                }
            };
            match (on_disk.is_some(), in_ws, rec) {
                (true, Some(_), rec) => {
                    if disk_changed {
                        if let Some(s) = seen {
                            plan.ops.push(DiskOp::Write {
                                path: wpath,
                                bytes: s.bytes,
                                stamp: s.stamp,
                                base: rec.map(|r| r.base),
                            });
                        }
                    } else if let Some(r) = rec {
                        let stale = r.disk.is_none_or(|d| d.hash != r.content_hash);
                        if ws_changed || stale {
                            plan.to_disk.push((path.clone(), r.disk));
                        }
                    }
                }
                (true, None, rec) => match rec {
                    // Deleted in the workspace, unchanged here: delete.
                    Some(r) if !disk_changed => {
                        if let Some(d) = r.disk {
                            plan.to_delete.push((path.clone(), d));
                        }
                    }
                    // New here, or edited here after the workspace deleted
                    // it (the edit wins): add it.
                    _ => {
                        if let Some(s) = seen {
                            new_files.push((wpath, s));
                        }
                    }
                },
                (false, Some(_), rec) => match rec {
                    None => plan.to_disk.push((path.clone(), None)),
                    // Changed in the workspace after it was deleted here:
                    // the teammate's edit wins, the file comes back.
                    Some(_) if ws_changed => plan.to_disk.push((path.clone(), None)),
                    Some(r) => removed.push((wpath, r)),
                },
                (false, None, Some(_)) => {
                    self.records.remove(path);
                    plan.records.push((path.clone(), None));
                }
                (false, None, None) => {}
            }
        }
        // A file that vanished and one that appeared with its content: a
        // rename (or a directory moved), which keeps the file's history.
        let mut by_hash: BTreeMap<[u8; 32], Vec<(WorkspacePath, FileRecord)>> = BTreeMap::new();
        for (path, r) in removed {
            if let Some(d) = r.disk {
                by_hash.entry(d.hash).or_default().push((path, r));
            } else {
                plan.ops.push(remove_op(path, r));
            }
        }
        for (to, s) in new_files {
            match by_hash.get_mut(&s.stamp.hash).and_then(Vec::pop) {
                Some((from, r)) => plan.ops.push(DiskOp::Rename {
                    from,
                    to,
                    stamp: s.stamp,
                    base: r.base,
                }),
                None => plan.ops.push(DiskOp::Write {
                    path: to,
                    bytes: s.bytes,
                    stamp: s.stamp,
                    base: None,
                }),
            }
        }
        for (path, r) in by_hash.into_values().flatten() {
            plan.ops.push(remove_op(path, r));
        }
        if self.receive_only {
            for op in std::mem::take(&mut plan.ops) {
                match op {
                    DiskOp::Write { path, .. } | DiskOp::Remove { path, .. } => {
                        plan.local.push(path.to_string());
                    }
                    DiskOp::Rename { from, to, .. } => {
                        plan.local.push(from.to_string());
                        plan.local.push(to.to_string());
                    }
                }
            }
        }
        plan
    }

    async fn execute(&mut self, mut plan: Plan, full: bool) {
        let ws = self.link.workspace;
        let dir = self.link.dir.clone();
        self.local_changes.extend(plan.local.drain(..));
        // Disk -> workspace, in batches of one commit each.
        let total = plan.ops.len();
        let mut done = 0;
        let mut ops = std::mem::take(&mut plan.ops).into_iter().peekable();
        while ops.peek().is_some() {
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(op) = ops.peek() {
                let size = match op {
                    DiskOp::Write { bytes, .. } => bytes.len(),
                    _ => 0,
                };
                if !batch.is_empty()
                    && (batch.len() >= OPS_PER_COMMIT || bytes + size > BYTES_PER_COMMIT)
                {
                    break;
                }
                bytes += size;
                if let Some(op) = ops.next() {
                    batch.push(op);
                }
            }
            let stamps: BTreeMap<String, DiskStamp> = batch
                .iter()
                .filter_map(|op| match op {
                    DiskOp::Write { path, stamp, .. } => Some((path.to_string(), *stamp)),
                    DiskOp::Rename { to, stamp, .. } => Some((to.to_string(), *stamp)),
                    DiskOp::Remove { .. } => None,
                })
                .collect();
            done += batch.len();
            let outcome = self
                .store
                .folder_ingest(dir.clone(), ws, batch, crate::now_ms())
                .await;
            if full {
                self.progress(done, total);
            }
            match outcome {
                Ok(results) => {
                    self.last_sync = Some(crate::now_ms());
                    for (path, result) in results {
                        let key = path.to_string();
                        match result {
                            Ok(Some(state)) => {
                                let stamp = stamps.get(&key).copied();
                                self.note_kind(&state);
                                let on_disk = stamp.map(|s| s.hash);
                                if stamp.is_some() {
                                    self.records.insert(key.clone(), record_of(&state, stamp));
                                }
                                if on_disk != Some(*blake3::hash(&state.bytes).as_bytes()) {
                                    let expect = stamp
                                        .or_else(|| self.records.get(&key).and_then(|r| r.disk));
                                    plan.to_disk.push((key, expect));
                                }
                            }
                            Ok(None) => {
                                self.records.remove(&key);
                                self.whole.remove(&key);
                            }
                            Err(e) => self.error(format!("{key}: {e}")),
                        }
                    }
                }
                Err(StoreError::Forbidden(_)) => {
                    // The role changed under us: receive-only from now on.
                    self.receive_only = true;
                }
                Err(e) => self.error(format!("cannot take changes in: {e}")),
            }
        }
        // Workspace -> disk.
        let mut records = std::mem::take(&mut plan.records);
        self.write_out(plan.to_disk, &mut records).await;
        for (path, expect) in plan.to_delete {
            match disk::delete(&self.root, &path, &expect, self.options.max_file_bytes) {
                Ok(true) => {
                    self.records.remove(&path);
                    self.whole.remove(&path);
                    records.push((path, None));
                    self.last_sync = Some(crate::now_ms());
                }
                // Edited here meanwhile: the next pass adds it back.
                Ok(false) => {}
                Err(e) => self.error(e),
            }
        }
        if !records.is_empty()
            && let Err(e) = self.store.folder_record(dir, records).await
        {
            self.error(format!("cannot save the folder's records: {e}"));
        }
    }

    fn note_kind(&mut self, state: &FileState) {
        if state.kind == FileKind::Binary {
            self.whole.insert(state.path.to_string());
        } else {
            self.whole.remove(state.path.as_str());
        }
    }

    /// Writes the workspace's version of `paths` to disk, unless a local
    /// edit got there first (then it is left for the next pass to merge).
    async fn write_out(
        &mut self,
        paths: Vec<(String, Option<DiskStamp>)>,
        records: &mut Vec<(String, Option<FileRecord>)>,
    ) {
        if paths.is_empty() {
            return;
        }
        let expected: BTreeMap<String, Option<DiskStamp>> = paths.into_iter().collect();
        let wanted: Vec<WorkspacePath> = expected
            .keys()
            .filter_map(|p| WorkspacePath::parse(p).ok())
            .collect();
        let states = match self.store.file_states(self.link.workspace, wanted).await {
            Ok(s) => s,
            Err(e) => {
                self.error(format!("cannot read the workspace: {e}"));
                return;
            }
        };
        let collisions = if self.case_insensitive {
            let incoming: Vec<String> = states.iter().map(|(p, _)| p.to_string()).collect();
            case_collisions(self.records.keys().map(String::as_str), &incoming)
        } else {
            BTreeMap::new()
        };
        let mut prepared = Vec::new();
        for (path, state) in states {
            let key = path.to_string();
            let Some(state) = state else { continue };
            if self.receive_only && self.local_changes.contains(&key) {
                continue;
            }
            if self.ignores.ignored(&key, false) {
                // A teammate cannot plant a git hook or our own files here.
                let note = if Ignores::never_synced(&key) {
                    format!(
                        "{key}: in the workspace, never written to a folder (.git/ and the node's own files)"
                    )
                } else {
                    format!("{key}: in the workspace, ignored here")
                };
                if !self.skipped.contains(&note) && self.skipped.len() < MAX_SKIPPED {
                    self.skipped.push(note);
                }
                continue;
            }
            if let Some(other) = collisions.get(&key) {
                self.error(format!(
                    "{key}: not written, it collides with {other} on this case-insensitive disk; rename one of them"
                ));
                continue;
            }
            let expect = expected.get(&key).copied().flatten();
            let mode = state
                .mode
                .or_else(|| expect.map(|e| e.mode))
                .unwrap_or(disk::DEFAULT_MODE);
            let limit = self.options.max_file_bytes.max(state.bytes.len() as u64);
            match disk::prepare(&self.root, &key, &state.bytes, mode, expect.as_ref(), limit) {
                Ok(Ok(p)) => prepared.push((key, state, expect, p)),
                Ok(Err(outcome)) => self.written(key, &state, outcome, records),
                Err(e) => self.error(e),
            }
        }
        if prepared.is_empty() {
            return;
        }
        // One flush makes the whole batch durable before any rename.
        if let Err(e) = disk::flush(&self.root) {
            self.error(e);
            return;
        }
        for (key, state, expect, p) in prepared {
            let limit = self.options.max_file_bytes.max(state.bytes.len() as u64);
            match disk::commit(p, expect.as_ref(), limit) {
                Ok(outcome) => self.written(key, &state, outcome, records),
                Err(e) => self.error(e),
            }
        }
    }

    /// Records what writing the workspace's `state` of `key` did.
    fn written(
        &mut self,
        key: String,
        state: &FileState,
        outcome: Written,
        records: &mut Vec<(String, Option<FileRecord>)>,
    ) {
        match outcome {
            Written::Done(stamp) => {
                self.note_kind(state);
                let r = record_of(state, Some(stamp));
                self.records.insert(key.clone(), r.clone());
                records.push((key, Some(r)));
                self.last_sync = Some(crate::now_ms());
            }
            // Saved here meanwhile: the next pass takes the edit in, merges,
            // then writes.
            Written::LocalEdit => {
                self.followup.insert(key);
            }
        }
    }

    /// Restores the workspace's version of every local edit of a
    /// receive-only folder.
    async fn revert(&mut self) -> Result<FolderOutcome, FolderError> {
        if !self.receive_only {
            return Err(FolderError::NotReceiveOnly(self.link.dir.clone()));
        }
        let paths: Vec<String> = self.local_changes.iter().cloned().collect();
        let wanted: Vec<WorkspacePath> = paths
            .iter()
            .filter_map(|p| WorkspacePath::parse(p).ok())
            .collect();
        let states = self.store.file_states(self.link.workspace, wanted).await?;
        let mut restored = 0;
        let mut kept = Vec::new();
        let mut records = Vec::new();
        for (path, state) in states {
            let key = path.to_string();
            let Some(state) = state else {
                kept.push(key);
                continue;
            };
            let current = disk::read(&self.root.join(&key), self.options.max_file_bytes)
                .ok()
                .flatten()
                .map(|(_, s)| s);
            let mode = state.mode.unwrap_or(disk::DEFAULT_MODE);
            match disk::write(
                &self.root,
                &key,
                &state.bytes,
                mode,
                current.as_ref(),
                self.options.max_file_bytes.max(state.bytes.len() as u64),
            ) {
                Ok(Written::Done(stamp)) => {
                    let r = record_of(&state, Some(stamp));
                    self.records.insert(key.clone(), r.clone());
                    records.push((key.clone(), Some(r)));
                    self.local_changes.remove(&key);
                    restored += 1;
                }
                Ok(Written::LocalEdit) => kept.push(key),
                Err(e) => self.error(e),
            }
        }
        if !records.is_empty() {
            self.store
                .folder_record(self.link.dir.clone(), records)
                .await?;
        }
        self.publish(FolderState::Watching, 0);
        Ok(FolderOutcome {
            dir: self.link.dir.clone(),
            changed: restored,
            kept,
        })
    }
}

fn remove_op(path: WorkspacePath, r: FileRecord) -> DiskOp {
    DiskOp::Remove { path, base: r.base }
}

fn same_heads(a: &[[u8; 32]], b: &[[u8; 32]]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_unstable();
    b.sort_unstable();
    a == b
}

/// On a case-insensitive disk: each incoming path that differs only by
/// case from a path already on disk or from an earlier incoming one, with
/// the path it collides with.
fn case_collisions<'a>(
    existing: impl Iterator<Item = &'a str>,
    incoming: &[String],
) -> BTreeMap<String, String> {
    let mut taken: BTreeMap<String, String> =
        existing.map(|k| (k.to_lowercase(), k.to_owned())).collect();
    let mut out = BTreeMap::new();
    for p in incoming {
        match taken.get(&p.to_lowercase()) {
            Some(other) if other != p => {
                out.insert(p.clone(), other.clone());
            }
            Some(_) => {}
            None => {
                taken.insert(p.to_lowercase(), p.clone());
            }
        }
    }
    out
}

/// The paths of `set` that are not under another one of them.
fn minimal_prefixes(set: &BTreeSet<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in set {
        if out
            .last()
            .is_some_and(|last| p.starts_with(&format!("{last}/")))
        {
            continue;
        }
        out.push(p.clone());
    }
    out
}

#[cfg(test)]
mod tests;
