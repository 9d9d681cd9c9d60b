//! `xencode lsp`: a language server over stdio that makes any LSP editor a
//! live client of the workspace (ARCHITECTURE section 12, `docs/editors.md`).
//!
//! The editor starts it for files in a linked folder; it talks to the
//! running node through the node's API. Keystrokes (`didChange`, incremental)
//! become splices on the node at the version the editor saw
//! ([`document`]); teammates' edits come back as `workspace/applyEdit`s; the
//! files the editor holds open are leased to it so that the folder does not
//! write them underneath; the team's stored analysis becomes diagnostics
//! (and hover text), refreshed when a teammate's analysis arrives and after
//! edits. If the node stops, the server says so, keeps the editor's text,
//! and resumes when the node is back.

mod document;
mod findings;
mod presence;
mod rpc;
mod text;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use xencode_node::paths::DataDir;
use xencode_protocol::api::{
    EditorCursor, EditorLease, EditorSave, EditorSession, FolderList, SpliceResponse, Teammate,
};
use xencode_protocol::{WorkspaceId, WorkspacePath};

use super::client::Client;
use document::OpenDoc;

/// How often leases are renewed and a lost node is looked for.
const TICK: Duration = Duration::from_secs(2);
/// How often moved cursors are looked for.
const POLL: Duration = Duration::from_millis(100);
/// Quiet time after an edit before the file is analysed again.
const REANALYSE_AFTER: Duration = Duration::from_millis(1500);
/// Messages queued from the editor, and to it.
const QUEUE: usize = 1024;

/// What reaches the main loop.
enum Input {
    Editor(Value),
    /// A splice answered (or failed) for a document.
    Answer(String, Result<SpliceResponse>),
    /// A node event: its type and JSON.
    Event(String, Value),
    /// The event stream ended (the node stopped).
    EventsEnded,
    /// Stored analyses of a workspace arrived.
    Analyses(WorkspaceId, Vec<xencode_protocol::analysis::AnalysisRecord>),
}

/// Runs the server until the editor says `exit` or closes stdin.
pub async fn run(dir: &DataDir) -> Result<()> {
    let (tx, mut rx) = mpsc::channel::<Input>(QUEUE);
    let (out_tx, out_rx) = std::sync::mpsc::sync_channel::<Value>(QUEUE);
    let reader_tx = tx.clone();
    std::thread::spawn(move || {
        let mut stdin = std::io::BufReader::new(std::io::stdin());
        loop {
            match rpc::read(&mut stdin) {
                Ok(Some(Ok(v))) => {
                    if reader_tx.blocking_send(Input::Editor(v)).is_err() {
                        break;
                    }
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "a message that is not JSON; skipped")
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(error = %e, "the editor's stream broke");
                    break;
                }
            }
        }
        let _ = reader_tx.blocking_send(Input::Editor(json!({"method": "exit"})));
    });
    std::thread::spawn(move || {
        let mut stdout = std::io::stdout().lock();
        while let Ok(msg) = out_rx.recv() {
            if rpc::write(&mut stdout, &msg).is_err() {
                break;
            }
        }
    });
    let mut server = Server {
        dir: dir.clone(),
        client: None,
        out: out_tx,
        tx,
        docs: BTreeMap::new(),
        folders: Vec::new(),
        folders_at: None,
        session: format!("lsp-{}-{}", std::process::id(), xencode_node::now_ms()),
        next_id: 1,
        pending_apply: HashMap::new(),
        saves: BTreeMap::new(),
        said_down: false,
        analyses: BTreeMap::new(),
        edited_at: BTreeMap::new(),
        declined: BTreeSet::new(),
        renewed_at: Instant::now(),
        teammates: BTreeMap::new(),
        told_cursors: BTreeMap::new(),
        leased_at: BTreeMap::new(),
        presence_due: BTreeSet::new(),
    };
    let mut tick = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            input = rx.recv() => match input {
                Some(Input::Editor(msg)) => {
                    if !server.editor(msg).await {
                        break;
                    }
                }
                Some(Input::Answer(uri, r)) => server.answer(&uri, r),
                Some(Input::Event(kind, ev)) => server.event(&kind, &ev).await,
                Some(Input::EventsEnded) => server.lost(),
                Some(Input::Analyses(ws, list)) => server.analyses(ws, list),
                None => break,
            },
            _ = tick.tick() => server.tick().await,
        }
        for ws in server.leases_due() {
            server.lease(ws).await;
        }
    }
    server.release().await;
    Ok(())
}

struct Server {
    dir: DataDir,
    client: Option<Arc<Client>>,
    out: std::sync::mpsc::SyncSender<Value>,
    tx: mpsc::Sender<Input>,
    docs: BTreeMap<String, OpenDoc>,
    folders: Vec<(PathBuf, WorkspaceId)>,
    folders_at: Option<Instant>,
    session: String,
    next_id: i64,
    /// `applyEdit` requests awaiting the editor's answer: id → uri.
    pending_apply: HashMap<i64, String>,
    /// Saves to report with the next lease, per workspace.
    saves: BTreeMap<WorkspaceId, Vec<EditorSave>>,
    said_down: bool,
    /// The latest stored analysis of each open file.
    analyses: BTreeMap<(WorkspaceId, String), xencode_protocol::analysis::AnalysisRecord>,
    /// When each document was last edited here (for re-analysis).
    edited_at: BTreeMap<String, Instant>,
    /// Files outside every linked folder, already told about.
    declined: BTreeSet<String>,
    /// When the leases were last renewed.
    renewed_at: Instant,
    /// Teammates with each open file open too, as last told the editor.
    teammates: BTreeMap<String, Vec<Teammate>>,
    /// The cursor of each open file as last told the node.
    told_cursors: BTreeMap<String, EditorCursor>,
    /// When each workspace's lease was last sent.
    leased_at: BTreeMap<WorkspaceId, Instant>,
    /// Workspaces whose teammates' presence changed since the last lease.
    presence_due: BTreeSet<WorkspaceId>,
}

impl Server {
    fn send(&self, msg: Value) {
        let _ = self.out.try_send(msg);
    }

    fn notify(&self, method: &str, params: Value) {
        self.send(json!({"jsonrpc": "2.0", "method": method, "params": params}));
    }

    fn reply(&self, id: &Value, result: Value) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "result": result}));
    }

    fn show(&self, kind: u8, message: &str) {
        self.notify(
            "window/showMessage",
            json!({"type": kind, "message": format!("xencode: {message}")}),
        );
    }

    /// The node, connecting (and starting the event stream) if need be.
    fn node(&mut self) -> Option<Arc<Client>> {
        if let Some(c) = &self.client {
            return Some(Arc::clone(c));
        }
        match Client::connect(&self.dir) {
            Ok(c) => {
                let c = Arc::new(c);
                self.client = Some(Arc::clone(&c));
                self.folders_at = None;
                spawn_events(Arc::clone(&c), self.tx.clone());
                if self.said_down {
                    self.said_down = false;
                    self.show(3, "the node is back; live editing resumes");
                }
                for d in self.docs.values_mut() {
                    d.poll = true;
                }
                Some(c)
            }
            Err(e) => {
                if !self.said_down {
                    self.said_down = true;
                    self.show(
                        2,
                        &format!("{e:#}. Your edits are kept and sent when the node is back."),
                    );
                }
                None
            }
        }
    }

    /// The node stopped answering.
    fn lost(&mut self) {
        if self.client.take().is_some() && !self.said_down {
            self.said_down = true;
            self.show(
                2,
                "lost the node (stopped or restarting); your edits are kept and sent when it is back",
            );
        }
    }

    /// Handles one message from the editor; false to stop.
    async fn editor(&mut self, msg: Value) -> bool {
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
        let id = msg.get("id").cloned();
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        match (method, id) {
            ("initialize", Some(id)) => self.reply(&id, capabilities()),
            ("initialized", None) => {
                self.node();
            }
            ("shutdown", Some(id)) => {
                self.release().await;
                self.reply(&id, Value::Null);
            }
            ("exit", _) => return false,
            ("textDocument/didOpen", None) => self.open(&params).await,
            ("textDocument/didChange", None) => self.change(&params),
            ("textDocument/didSave", None) => self.saved(&params),
            ("textDocument/didClose", None) => self.close(&params).await,
            ("textDocument/hover", Some(id)) => {
                self.cursor_seen(&params);
                let h = self.hover(&params);
                self.reply(&id, h);
            }
            ("xencode/cursor", None) => self.cursor_seen(&params),
            ("textDocument/codeAction", Some(id)) => {
                self.cursor_seen(&params);
                let actions = self.code_actions(&params);
                self.reply(&id, actions);
            }
            ("", Some(id)) => self.editor_answer(&id, &msg),
            (_, Some(id)) => self.send(json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32601, "message": format!("xencode lsp does not handle {method}")}})),
            _ => {}
        }
        self.pump();
        true
    }

    /// The workspace and path of a `file://` URI inside a linked folder.
    async fn locate(&mut self, uri: &str) -> Option<(WorkspaceId, WorkspacePath)> {
        let path = file_path(uri)?;
        let stale = self
            .folders_at
            .is_none_or(|t| t.elapsed() > Duration::from_secs(2));
        if stale && !self.folders.iter().any(|(d, _)| path.starts_with(d)) {
            let client = self.node()?;
            match client
                .get_json::<FolderList>(&["api", "v1", "folders"])
                .await
            {
                Ok(list) => {
                    self.folders = list
                        .folders
                        .into_iter()
                        .map(|f| (PathBuf::from(f.dir), f.workspace))
                        .collect();
                    self.folders_at = Some(Instant::now());
                }
                Err(_) => self.lost(),
            }
        }
        let (dir, ws) = self
            .folders
            .iter()
            .filter(|(d, _)| path.starts_with(d))
            .max_by_key(|(d, _)| d.as_os_str().len())?;
        let rel = path.strip_prefix(dir).ok()?.to_str()?.to_owned();
        Some((*ws, WorkspacePath::parse(&rel).ok()?))
    }

    async fn open(&mut self, params: &Value) {
        let doc = &params["textDocument"];
        let (Some(uri), Some(text)) = (doc["uri"].as_str(), doc["text"].as_str()) else {
            return;
        };
        let version = doc["version"].as_i64().unwrap_or(0);
        let Some((ws, path)) = self.locate(uri).await else {
            if self.declined.insert(uri.to_owned()) {
                self.show(
                    3,
                    &format!(
                        "{uri} is not in a linked folder (or the node is not running); it is not shared. Link its folder with `xencode folder link`."
                    ),
                );
            }
            return;
        };
        self.docs.insert(
            uri.to_owned(),
            OpenDoc::new(uri.to_owned(), ws, path, version, text.to_owned()),
        );
        self.lease(ws).await;
        self.fetch_analyses(ws);
    }

    fn change(&mut self, params: &Value) {
        let Some(uri) = params["textDocument"]["uri"].as_str() else {
            return;
        };
        let Some(doc) = self.docs.get_mut(uri) else {
            return;
        };
        if let Some(v) = params["textDocument"]["version"].as_i64() {
            doc.version = v;
        }
        for c in params["contentChanges"].as_array().into_iter().flatten() {
            if let Err(e) = doc.change(c) {
                tracing::warn!(%uri, error = %e, "a change that does not fit the text; skipped");
            }
        }
        self.edited_at.insert(uri.to_owned(), Instant::now());
    }

    fn saved(&mut self, params: &Value) {
        let Some(uri) = params["textDocument"]["uri"].as_str() else {
            return;
        };
        if let Some(doc) = self.docs.get_mut(uri) {
            let text = params["text"]
                .as_str()
                .map_or_else(|| doc.shadow.clone(), str::to_owned);
            doc.save(text);
        }
    }

    async fn close(&mut self, params: &Value) {
        let Some(uri) = params["textDocument"]["uri"].as_str() else {
            return;
        };
        if let Some(doc) = self.docs.remove(uri) {
            self.edited_at.remove(uri);
            self.teammates.remove(uri);
            self.told_cursors.remove(uri);
            self.notify(
                "textDocument/publishDiagnostics",
                json!({"uri": uri, "diagnostics": []}),
            );
            self.lease(doc.workspace).await;
        }
    }

    /// The editor answered a request of ours (an `applyEdit`).
    fn editor_answer(&mut self, id: &Value, _msg: &Value) {
        let Some((id, uri)) = id
            .as_i64()
            .and_then(|i| Some((i, self.pending_apply.remove(&i)?)))
        else {
            return;
        };
        if let Some(doc) = self.docs.get_mut(&uri) {
            doc.applied(id);
        }
    }

    /// Sends whatever each document has to send.
    fn pump(&mut self) {
        let Some(client) = self.client.clone() else {
            return;
        };
        for doc in self.docs.values_mut() {
            if let Some(req) = doc.next_request() {
                let (client, tx, uri, ws) = (
                    Arc::clone(&client),
                    self.tx.clone(),
                    doc.uri.clone(),
                    doc.workspace.to_string(),
                );
                tokio::spawn(async move {
                    let r = client
                        .post_json(&["api", "v1", "workspaces", &ws, "splice"], &req)
                        .await;
                    let _ = tx.send(Input::Answer(uri, r)).await;
                });
            }
        }
    }

    fn answer(&mut self, uri: &str, r: Result<SpliceResponse>) {
        let Some(doc) = self.docs.get_mut(uri) else {
            return;
        };
        let mut outgoing = None;
        let mut problem = None;
        match r {
            Ok(resp) => {
                if let Some(edits) = doc.answer(resp) {
                    outgoing = Some((doc.version, edits));
                }
                if let Some((hash, heads)) = doc.settled_save() {
                    self.saves
                        .entry(doc.workspace)
                        .or_default()
                        .push(EditorSave {
                            path: doc.path.clone(),
                            hash: hex::encode(hash),
                            heads,
                        });
                }
            }
            Err(e) => {
                doc.failed();
                match super::client::refusal_code(&e) {
                    // Not in the workspace yet (a new file): the folder adds
                    // it on save; the editor's text is the news then.
                    Some("file_not_found") => doc.editor_wins = true,
                    Some("unknown_base" | "not_text") => {
                        problem = Some(format!("{}: not live-shared: {e:#}", doc.path));
                    }
                    // Any other answer, or none: the node is not there.
                    _ => problem = Some(String::new()),
                }
            }
        }
        if let Some((version, edits)) = outgoing {
            let id = self.next_id;
            self.next_id += 1;
            self.pending_apply.insert(id, uri.to_owned());
            if let Some(doc) = self.docs.get_mut(uri) {
                doc.sent_as(id);
            }
            self.send(
                json!({"jsonrpc": "2.0", "id": id, "method": "workspace/applyEdit",
                "params": {"label": "xencode: a teammate's edit", "edit": {"documentChanges": [
                    {"textDocument": {"uri": uri, "version": version}, "edits": edits}
                ]}}}),
            );
        }
        match problem {
            Some(m) if m.is_empty() => self.lost(),
            Some(m) => {
                self.show(2, &m);
                self.docs.remove(uri);
            }
            None => {}
        }
        self.publish(uri);
        self.pump();
    }

    async fn event(&mut self, kind: &str, ev: &Value) {
        let ws: Option<WorkspaceId> = ev["workspace"].as_str().and_then(|w| w.parse().ok());
        match kind {
            "file_changed" => {
                let path = ev["path"].as_str().unwrap_or("");
                for d in self.docs.values_mut() {
                    if Some(d.workspace) == ws && d.path.as_str() == path {
                        d.poll = true;
                    }
                }
                self.pump();
            }
            // A teammate's analysis arrives as a change of the index.
            "analysis" | "index_changed" => {
                if let Some(ws) = ws.filter(|w| self.docs.values().any(|d| d.workspace == *w)) {
                    self.fetch_analyses(ws);
                }
            }
            // Teammates opened or closed files, or moved: the lease's
            // answer says who has ours open.
            // Asked at most every `CURSOR_EVERY` (`leases_due`): a busy
            // teammate's cursor moves many times a second.
            "presence" => {
                if let Some(ws) = ws.filter(|w| self.docs.values().any(|d| d.workspace == *w)) {
                    self.presence_due.insert(ws);
                }
            }
            _ => {}
        }
    }

    /// Renews the leases, retries what waits for the node, re-analyses
    /// files edited a while ago.
    async fn tick(&mut self) {
        if self.renewed_at.elapsed() < TICK {
            return;
        }
        self.renewed_at = Instant::now();
        if self.client.is_none() && !self.docs.is_empty() {
            self.node();
        }
        let workspaces: BTreeSet<WorkspaceId> = self.docs.values().map(|d| d.workspace).collect();
        for ws in workspaces {
            self.lease(ws).await;
        }
        let due: Vec<String> = self
            .edited_at
            .iter()
            .filter(|(_, t)| t.elapsed() >= REANALYSE_AFTER)
            .map(|(u, _)| u.clone())
            .collect();
        for uri in due {
            self.edited_at.remove(&uri);
            self.reanalyse(&uri);
        }
        self.pump();
    }

    /// The open documents of `ws`.
    fn uris_in(&self, ws: WorkspaceId) -> Vec<String> {
        self.docs
            .values()
            .filter(|d| d.workspace == ws)
            .map(|d| d.uri.clone())
            .collect()
    }

    /// Tells the node which files of `ws` are open here (and saves).
    async fn lease(&mut self, ws: WorkspaceId) {
        let Some(client) = self.node() else { return };
        let open: Vec<WorkspacePath> = self
            .docs
            .values()
            .filter(|d| d.workspace == ws)
            .map(|d| d.path.clone())
            .collect();
        let saves = self.saves.remove(&ws).unwrap_or_default();
        let cursors = self.cursors(ws);
        self.told(ws, &cursors);
        let body = EditorSession {
            session: self.session.clone(),
            open,
            saves,
            cursors,
        };
        let w = ws.to_string();
        let r: Result<EditorLease> = client
            .post_json(&["api", "v1", "workspaces", &w, "editors"], &body)
            .await;
        match r {
            Ok(lease) => self.heard(ws, &lease.teammates),
            Err(e) => {
                tracing::debug!(error = %e, "lease not renewed");
                self.saves.entry(ws).or_default().extend(body.saves);
                self.lost();
            }
        }
    }

    /// Gives the open files back (at shutdown).
    async fn release(&mut self) {
        let workspaces: BTreeSet<WorkspaceId> = self.docs.values().map(|d| d.workspace).collect();
        self.docs.clear();
        for ws in workspaces {
            self.lease(ws).await;
        }
    }
}

/// What the server offers.
fn capabilities() -> Value {
    json!({
        "capabilities": {
            "positionEncoding": "utf-16",
            "textDocumentSync": {"openClose": true, "change": 2, "save": {"includeText": true}},
            "hoverProvider": true,
            "codeActionProvider": {"codeActionKinds": ["quickfix"]},
        },
        "serverInfo": {"name": "xencode", "version": env!("CARGO_PKG_VERSION")},
    })
}

/// The local path of a `file://` URI (percent-decoded).
fn file_path(uri: &str) -> Option<PathBuf> {
    let rest = uri.strip_prefix("file://")?;
    let mut bytes = Vec::with_capacity(rest.len());
    let raw = rest.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' && i + 2 < raw.len() {
            let h = std::str::from_utf8(&raw[i + 1..i + 3]).ok()?;
            bytes.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(bytes).ok()?;
    let p = Path::new(&s);
    p.is_absolute().then(|| p.to_path_buf())
}

/// Reads the node's events into the loop until the stream ends.
fn spawn_events(client: Arc<Client>, tx: mpsc::Sender<Input>) {
    tokio::spawn(async move {
        if let Ok(mut resp) = client.get_stream(&["api", "v1", "events"]).await {
            let mut buf = String::new();
            let mut kind = String::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                buf.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(nl) = buf.find('\n') {
                    let line: String = buf.drain(..=nl).collect();
                    let line = line.trim_end();
                    if let Some(k) = line.strip_prefix("event:") {
                        kind = k.trim().to_owned();
                    } else if let Some(d) = line.strip_prefix("data:")
                        && let Ok(v) = serde_json::from_str::<Value>(d.trim())
                    {
                        let _ = tx.send(Input::Event(kind.clone(), v)).await;
                    }
                }
                if buf.len() > 1 << 20 {
                    buf.clear();
                }
            }
        }
        let _ = tx.send(Input::EventsEnded).await;
    });
}
