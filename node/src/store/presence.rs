//! Presence: which files this node's editors have open (told to teammates
//! through the sync engine), and which files teammates have open (heard
//! from their sessions, gone when a session closes).
//!
//! Cursors cross the network as Automerge cursors, so a teammate's cursor
//! lands on the same character here even when the two copies of the text
//! differ for a moment. A peer's word is checked like any input: paths must
//! be workspace paths, and nothing of it is stored or relayed.

use std::collections::BTreeMap;

use automerge::ChangeHash;
use xencode_protocol::api::{NodeEvent, Teammate};
use xencode_protocol::sync::Input;
use xencode_protocol::wire::OpenFile;
use xencode_protocol::{PeerId, WorkspaceId, WorkspacePath};

use super::StoreError;
use super::actor::Actor;

/// A file this node's editors have open, with the cursor (an offset in
/// Unicode scalar values into the text at those heads).
#[derive(Debug, Clone)]
pub struct OpenHere {
    pub path: String,
    pub cursor: Option<(u64, Vec<[u8; 32]>)>,
}

/// A teammate's word: its open files and their cursors.
type Said = Vec<(WorkspacePath, Option<String>)>;

/// What teammates have open: workspace → peer → their files.
#[derive(Debug, Default)]
pub(super) struct Heard {
    files: BTreeMap<WorkspaceId, BTreeMap<PeerId, Said>>,
}

impl Heard {
    /// Records what `peer` said about `ws`; whether it changed anything.
    fn set(&mut self, ws: WorkspaceId, peer: PeerId, said: Said) -> bool {
        if said.is_empty() {
            return self.forget(ws, peer);
        }
        let peers = self.files.entry(ws).or_default();
        peers.insert(peer, said.clone()) != Some(said)
    }

    /// Forgets `peer`'s word about `ws`; whether there was one.
    fn forget(&mut self, ws: WorkspaceId, peer: PeerId) -> bool {
        let Some(peers) = self.files.get_mut(&ws) else {
            return false;
        };
        let had = peers.remove(&peer).is_some();
        if peers.is_empty() {
            self.files.remove(&ws);
        }
        had
    }
}

impl Actor {
    /// This node's editors have `files` of `ws` open.
    pub(super) fn set_presence(&mut self, ws: WorkspaceId, files: Vec<OpenHere>) {
        let Some(w) = self.workspaces.get_mut(&ws) else {
            return;
        };
        let files = files
            .into_iter()
            .filter_map(|OpenHere { path, cursor }| {
                let parsed = WorkspacePath::parse(&path).ok()?;
                let cursor = cursor.and_then(|(offset, heads)| {
                    let heads: Vec<ChangeHash> = heads.into_iter().map(ChangeHash).collect();
                    w.cursor(&parsed, offset, &heads)
                });
                Some(OpenFile { path, cursor })
            })
            .collect();
        self.run_engine(Input::Presence {
            workspace: ws,
            files,
        });
    }

    /// A teammate says what it has open: kept (valid paths only) until it
    /// says otherwise or its session closes.
    pub(super) fn heard_presence(&mut self, peer: PeerId, ws: WorkspaceId, files: Vec<OpenFile>) {
        let files: Said = files
            .into_iter()
            .filter_map(|f| Some((WorkspacePath::parse(&f.path).ok()?, f.cursor)))
            .collect();
        if self.sync.heard.set(ws, peer, files) {
            self.stats.publish(NodeEvent::Presence { workspace: ws });
        }
    }

    /// A session closed: the peer's word about `ws` ends.
    pub(super) fn presence_ended(&mut self, peer: PeerId, ws: WorkspaceId) {
        if self.sync.heard.forget(ws, peer) {
            self.stats.publish(NodeEvent::Presence { workspace: ws });
        }
    }

    /// Teammates with files of `ws` open, cursors placed in this node's text.
    pub(super) fn teammates(&mut self, ws: WorkspaceId) -> Result<Vec<Teammate>, StoreError> {
        let w = self
            .workspaces
            .get_mut(&ws)
            .ok_or(StoreError::WorkspaceNotFound(ws))?;
        let mut out = Vec::new();
        for (peer, files) in self.sync.heard.files.get(&ws).into_iter().flatten() {
            let peer_id = peer.to_string();
            let role = w.role_of(&peer_id);
            for (path, cursor) in files {
                out.push(Teammate {
                    peer_id: peer_id.clone(),
                    role,
                    path: path.clone(),
                    cursor: cursor.as_deref().and_then(|c| w.cursor_position(path, c)),
                });
            }
        }
        Ok(out)
    }
}
