//! One linked folder's task: the watcher, the store's events, debouncing,
//! and the loop that decides when to compare (`reconcile.rs` compares and
//! carries out). Runs on its own thread; never blocks another folder.

mod reconcile;

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use xencode_protocol::WorkspacePath;
use xencode_protocol::api::{FolderInfo, FolderState, NodeEvent};

use super::disk;
use super::editors::Editors;
use super::ignores::{self, Ignores};
use super::{Control, FolderOptions};
use crate::store::Store;
use crate::store::folders::{FileRecord, FolderLink};

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

/// Ops per ingest commit, and bytes. A pass's first commit takes
/// [`FIRST_COMMIT_OPS`] and each next one twice as many, up to
/// [`OPS_PER_COMMIT`]: the first files of a burst reach the teammates while
/// the rest are still being taken in, and a large import still commits in
/// large batches.
pub(super) const OPS_PER_COMMIT: usize = 512;
pub(super) const FIRST_COMMIT_OPS: usize = 32;
pub(super) const BYTES_PER_COMMIT: usize = 32 << 20;
/// Watcher events queued before the queue counts as overflowed.
const EVENT_QUEUE: usize = 8192;
/// Errors kept for `folder list`.
const MAX_ERRORS: usize = 20;
/// Skipped entries listed (the rest are counted).
pub(super) const MAX_SKIPPED: usize = 50;

pub(super) struct Task {
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
    /// Files open in editors (`xencode lsp`), which own them.
    editors: Arc<Editors>,
    /// Writes to open files not (yet) known as the editor's own save: when
    /// their grace period ends...
    deferred: BTreeMap<String, Instant>,
    /// ...and those whose grace period is over (taken in as any write).
    grace_over: BTreeSet<String>,
    /// Sync records sent to the store and not yet known committed.
    saving: Vec<tokio::sync::oneshot::Receiver<Result<(), crate::store::StoreError>>>,
}

impl Task {
    pub(super) fn new(
        store: Store,
        link: FolderLink,
        options: FolderOptions,
        status: Arc<Mutex<FolderInfo>>,
        editors: Arc<Editors>,
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
            editors,
            deferred: BTreeMap::new(),
            grace_over: BTreeSet::new(),
            saving: Vec::new(),
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

    pub(super) async fn run(mut self, mut control: mpsc::Receiver<Control>) {
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
        // The disk's burst so far: when its first and its latest change came.
        let mut first: Option<Instant> = None;
        let mut last = Instant::now();
        // The workspace changed: its changes arrive whole (one event per
        // file of a commit, sent together), so they are written out as soon
        // as the events queued are read, with no quiet period to wait for.
        let mut workspace_due = false;
        // Files being written, since when.
        let mut writing: BTreeMap<String, Instant> = BTreeMap::new();
        loop {
            let due = first
                .map(|f| (last + self.options.quiet).min(f + self.options.max_delay))
                .or(workspace_due.then(Instant::now));
            let stale = writing
                .values()
                .map(|t| *t + WRITE_TIMEOUT)
                .chain(self.deferred.values().copied())
                .min();
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
                        Ok(ev) => {
                            if !self.note_event(ev, &mut dirty, &mut index_changed) {
                                continue;
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => full = true,
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                    workspace_due = true;
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
                    Some(Control::Recheck(paths)) => {
                        dirty.extend(paths);
                        first.get_or_insert(Instant::now());
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
                    let due: Vec<String> = self
                        .deferred
                        .iter()
                        .filter(|(_, t)| now >= **t)
                        .map(|(p, _)| p.clone())
                        .collect();
                    for p in due {
                        self.deferred.remove(&p);
                        self.grace_over.insert(p.clone());
                        dirty.insert(p);
                        first.get_or_insert(now);
                    }
                    let disk_waits = first
                        .is_some_and(|f| now < (last + self.options.quiet).min(f + self.options.max_delay));
                    if disk_waits || (first.is_none() && !workspace_due) {
                        continue;
                    }
                    // Whatever else the queues already hold joins this pass.
                    loop {
                        match events.try_recv() {
                            Ok(ev) => {
                                self.note_event(ev, &mut dirty, &mut index_changed);
                            }
                            Err(broadcast::error::TryRecvError::Lagged(_)) => full = true,
                            Err(_) => break,
                        }
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
                    workspace_due = false;
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
        for rx in std::mem::take(&mut self.saving) {
            if let Ok(Err(e)) = rx.await {
                self.records_not_saved(e);
            }
        }
        tracing::info!(dir = %self.link.dir, "stopped syncing the folder");
    }

    /// A commit of the folder's sync records failed.
    fn records_not_saved(&mut self, e: crate::store::StoreError) {
        self.error(format!("cannot save the folder's records: {e}"));
    }

    /// Notes what a node event means for this folder; whether it concerns it.
    fn note_event(
        &self,
        ev: NodeEvent,
        dirty: &mut BTreeSet<String>,
        index_changed: &mut bool,
    ) -> bool {
        match ev {
            NodeEvent::FileChanged {
                workspace, path, ..
            } if workspace == self.link.workspace => {
                dirty.insert(path);
                true
            }
            NodeEvent::IndexChanged { workspace, .. }
            | NodeEvent::AccessChanged { workspace, .. }
                if workspace == self.link.workspace =>
            {
                *index_changed = true;
                true
            }
            _ => false,
        }
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

    /// Stops watching every watched directory not in `keep`.
    fn unwatch_except(&mut self, keep: &[String]) {
        let keep: HashSet<&String> = keep.iter().collect();
        let gone: Vec<String> = self
            .watched
            .iter()
            .filter(|d| !keep.contains(d))
            .cloned()
            .collect();
        for d in gone {
            if let Some(w) = self.watcher.as_mut() {
                // Already gone with its directory, usually.
                let _ = w.unwatch(&self.root.join(&d));
            }
            self.watched.remove(&d);
        }
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
}
