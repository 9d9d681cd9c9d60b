//! Comparing a folder with its workspace, path by path, and carrying out
//! what differs (ARCHITECTURE section 11): the disk, the workspace's file
//! and the record of what was last synced between them decide; saves
//! become ingest operations (three-way merges in the store), the
//! workspace's changes atomic writes that never clobber a local edit.

use std::collections::{BTreeMap, BTreeSet};

use tokio::time::Instant;

use xencode_protocol::WorkspacePath;
use xencode_protocol::api::{FileKind, FolderOutcome, FolderState};

use super::super::FolderError;
use super::super::disk::{self, DiskError, Written};
use super::super::ignores::{self, Ignores};
use super::{BYTES_PER_COMMIT, FIRST_COMMIT_OPS, MAX_SKIPPED, OPS_PER_COMMIT, Task};
use crate::store::StoreError;
use crate::store::folders::{DiskOp, DiskStamp, FileRecord, record_of};
use crate::workspace::folder::{FileHeads, FileState, SyncBase};

/// How long a write to a file open in an editor waits for the editor to
/// claim it as its own save before it is taken in as another tool's.
const EDITOR_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

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

impl Task {
    /// Compares disk, workspace and records for `scope` (every path if
    /// `None`) and carries out what differs.
    pub(super) async fn reconcile(&mut self, scope: Option<BTreeSet<String>>) {
        // A directory that vanished was deleted or moved; if moved, its
        // files are somewhere in the tree (the watcher may not have said
        // where, or not yet): compare everything, so that they are found
        // and taken as renames. Rare (`mv` or `rm -r` of a directory).
        let scope = scope.filter(|paths| !paths.iter().any(|p| self.directory_vanished(p)));
        let full = scope.is_none();
        let started = std::time::Instant::now();
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
        if full {
            // Directories gone or moved away: their watches go too (a moved
            // directory's watch would keep reporting its old path).
            self.unwatch_except(&dirs);
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
        let heads = self
            .store
            .file_heads(self.link.workspace, (!full).then(|| prefixes.clone()))
            .await;
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
        let compared = started.elapsed();
        let plan = self.plan(&all, &files, &ws);
        let (ops, to_disk) = (plan.ops.len(), plan.to_disk.len());
        self.execute(plan, full && !self.synced_once).await;
        tracing::debug!(
            dir = %self.link.dir,
            full,
            paths = all.len(),
            ops,
            to_disk,
            compared_ms = compared.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "compared the folder with the workspace"
        );
        self.synced_once |= full;
        self.publish(FolderState::Watching, 0);
    }

    /// Whether `p` was a synced directory that is no longer on disk.
    fn directory_vanished(&self, p: &str) -> bool {
        let under = format!("{p}/");
        let had_files = self
            .records
            .range(under.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&under));
        had_files && matches!(disk::lstat(&self.root.join(p)), Ok(None))
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
        let open = self.editors.open_in(self.link.workspace);
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
                (Some(h), Some(r)) => !r.base.is_at(h.doc, &h.heads),
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
            if open.contains(path)
                && !self.editor_may_go(path, in_ws, disk_changed, &seen, &mut plan)
            {
                continue;
            }
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

    /// For a file open in an editor: whether the usual comparison may go
    /// on. The folder never writes it (the editor owns it); the editor's own
    /// save is recorded as synced at the heads the editor reported; any
    /// other write is taken in once a grace period has passed without the
    /// editor claiming it.
    fn editor_may_go(
        &mut self,
        path: &str,
        in_ws: Option<&FileHeads>,
        disk_changed: bool,
        seen: &Option<Seen>,
        plan: &mut Plan,
    ) -> bool {
        // Not in the workspace yet: a new file is added as usual.
        let Some(h) = in_ws else { return true };
        let Some(s) = seen.as_ref().filter(|_| disk_changed) else {
            return false;
        };
        if let Some(save) = self.editors.saved(self.link.workspace, path, &s.stamp.hash) {
            let r = FileRecord {
                base: SyncBase {
                    doc: h.doc,
                    heads: save.heads,
                },
                content_hash: s.stamp.hash,
                disk: Some(s.stamp),
            };
            self.records.insert(path.to_owned(), r.clone());
            plan.records.push((path.to_owned(), Some(r)));
            self.deferred.remove(path);
            self.grace_over.remove(path);
            return false;
        }
        if self.grace_over.remove(path) {
            return true;
        }
        self.deferred
            .entry(path.to_owned())
            .or_insert_with(|| Instant::now() + EDITOR_GRACE);
        false
    }

    async fn execute(&mut self, mut plan: Plan, full: bool) {
        let ws = self.link.workspace;
        let dir = self.link.dir.clone();
        self.local_changes.extend(plan.local.drain(..));
        // Disk -> workspace, in batches of one commit each.
        let total = plan.ops.len();
        let mut done = 0;
        let mut ops = std::mem::take(&mut plan.ops).into_iter().peekable();
        let mut per_commit = FIRST_COMMIT_OPS;
        while ops.peek().is_some() {
            let mut batch = Vec::new();
            let mut bytes = 0;
            while let Some(op) = ops.peek() {
                let size = match op {
                    DiskOp::Write { bytes, .. } => bytes.len(),
                    _ => 0,
                };
                if !batch.is_empty()
                    && (batch.len() >= per_commit || bytes + size > BYTES_PER_COMMIT)
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
            per_commit = (per_commit * 2).min(OPS_PER_COMMIT);
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
        self.save_records(dir, records).await;
    }

    /// Sends sync records to the store without waiting for their commit
    /// (reported by a later pass, or when the folder stops).
    async fn save_records(&mut self, dir: String, records: Vec<(String, Option<FileRecord>)>) {
        let mut failed = Vec::new();
        self.saving.retain_mut(|rx| match rx.try_recv() {
            Ok(Ok(())) => false,
            Ok(Err(e)) => {
                failed.push(e);
                false
            }
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => true,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => false,
        });
        for e in failed {
            self.records_not_saved(e);
        }
        if records.is_empty() {
            return;
        }
        match self.store.folder_record_queued(dir, records).await {
            Ok(rx) => self.saving.push(rx),
            Err(e) => self.records_not_saved(e),
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
        // The whole batch is durable before any rename.
        let (meta, files): (Vec<_>, Vec<disk::Prepared>) = prepared
            .into_iter()
            .map(|(key, state, expect, p)| ((key, state, expect), p))
            .unzip();
        if let Err(e) = disk::flush(&files) {
            self.error(e);
            return;
        }
        for ((key, state, expect), p) in meta.into_iter().zip(files) {
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
    pub(super) async fn revert(&mut self) -> Result<FolderOutcome, FolderError> {
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
