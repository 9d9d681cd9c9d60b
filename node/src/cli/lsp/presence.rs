//! Presence in the editor: which teammates have the file open, and where
//! their cursors are; and this editor's cursor, for them.
//!
//! LSP has no notion of a peer's cursor, so the server tells the editor in
//! two ways: a `window/showMessage` when a teammate opens or closes the
//! file, and the custom notification `xencode/presence` (documented in
//! `docs/editors.md`) with every teammate's position, which an editor
//! configured for it draws (the Neovim snippet there shows them as virtual
//! text). This editor's cursor is the end of its last edit, or any position
//! it asks about (hover, code actions, or the custom `xencode/cursor`
//! notification, which an editor can send as the cursor moves).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use xencode_protocol::WorkspaceId;
use xencode_protocol::api::{EditorCursor, Teammate};

use super::Server;
use super::text::{self, Pos};

/// Least time between two cursor reports of one workspace.
pub(super) const CURSOR_EVERY: Duration = Duration::from_millis(150);

impl Server {
    /// The editor's cursor is at `params.position` in `params.textDocument`.
    pub(super) fn cursor_seen(&mut self, params: &Value) {
        let uri = params["textDocument"]["uri"].as_str().unwrap_or("");
        let pos = Pos::from_json(&params["position"])
            .or_else(|| Pos::from_json(&params["range"]["start"]));
        if let (Some(doc), Some(pos)) = (self.docs.get_mut(uri), pos) {
            doc.cursor_at(pos);
        }
    }

    /// The cursors of the open files of `ws`, as the node can place them.
    pub(super) fn cursors(&mut self, ws: WorkspaceId) -> Vec<EditorCursor> {
        self.docs
            .values_mut()
            .filter(|d| d.workspace == ws)
            .filter_map(|d| d.placed_cursor())
            .collect()
    }

    /// Workspaces to lease now: their cursors moved since they were last
    /// told, or teammates' presence changed, and the last lease is at least
    /// `CURSOR_EVERY` old.
    pub(super) fn leases_due(&mut self) -> Vec<WorkspaceId> {
        let mut due: Vec<WorkspaceId> = self.presence_due.iter().copied().collect();
        for doc in self.docs.values_mut() {
            let ws = doc.workspace;
            let Some(c) = doc.placed_cursor() else {
                continue;
            };
            if self.told_cursors.get(&doc.uri) != Some(&c) && !due.contains(&ws) {
                due.push(ws);
            }
        }
        due.retain(|ws| {
            self.leased_at
                .get(ws)
                .is_none_or(|t| t.elapsed() >= CURSOR_EVERY)
        });
        due
    }

    /// The node told who else has the open files of `ws` open.
    pub(super) fn heard(&mut self, ws: WorkspaceId, teammates: &[Teammate]) {
        let uris = self.uris_in(ws);
        for uri in uris {
            let Some(doc) = self.docs.get(&uri) else {
                continue;
            };
            let here: Vec<Teammate> = teammates
                .iter()
                .filter(|t| t.path == doc.path)
                .cloned()
                .collect();
            let before = self.teammates.get(&uri).cloned().unwrap_or_default();
            if before == here {
                continue;
            }
            let name = |t: &Teammate| {
                let role = t
                    .role
                    .map_or("no longer a member", xencode_protocol::api::Role::as_str);
                format!("{} ({role})", short(&t.peer_id))
            };
            for t in here
                .iter()
                .filter(|t| !before.iter().any(|b| b.peer_id == t.peer_id))
            {
                self.show(3, &format!("{} opened {}", name(t), doc.path));
            }
            for t in before
                .iter()
                .filter(|b| !here.iter().any(|t| t.peer_id == b.peer_id))
            {
                self.show(3, &format!("{} closed {}", name(t), doc.path));
            }
            let list: Vec<Value> = here
                .iter()
                .map(|t| {
                    let position = t.cursor.map(|c| {
                        let chars = usize::try_from(c).unwrap_or(usize::MAX);
                        let at = doc
                            .shadow
                            .char_indices()
                            .nth(chars)
                            .map_or(doc.shadow.len(), |(b, _)| b);
                        text::pos_at(&doc.shadow, at).to_json()
                    });
                    json!({"peerId": t.peer_id, "name": short(&t.peer_id), "role": t.role, "position": position})
                })
                .collect();
            self.notify("xencode/presence", json!({"uri": uri, "teammates": list}));
            self.teammates.insert(uri, here);
        }
    }

    /// Remembers what the node was told, when.
    pub(super) fn told(&mut self, ws: WorkspaceId, cursors: &[EditorCursor]) {
        self.leased_at.insert(ws, Instant::now());
        self.presence_due.remove(&ws);
        for doc in self.docs.values().filter(|d| d.workspace == ws) {
            match cursors.iter().find(|c| c.path == doc.path) {
                Some(c) => self.told_cursors.insert(doc.uri.clone(), c.clone()),
                None => self.told_cursors.remove(&doc.uri),
            };
        }
    }
}

/// The last characters of a peer id: enough to tell teammates apart.
pub(super) fn short(peer: &str) -> &str {
    peer.get(peer.len().saturating_sub(8)..).unwrap_or(peer)
}
