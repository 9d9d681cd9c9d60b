//! Presence: which files a node has open in an editor, and where its cursor
//! is, told to the members it has a session with.
//!
//! Presence is ephemeral. The node says all it has open each time
//! (replacing what it said before), the engine resends that to every
//! session that opens later, and a peer's word ends with its session. It
//! is content (file names, positions), so it goes only to peers admitted
//! with read access, and is taken only from admitted peers; anything else is
//! a protocol violation.

use libp2p_identity::PeerId;

use super::{Engine, Event};
use crate::ids::WorkspaceId;
use crate::wire::{Frame, MAX_PRESENCE_FILES, OpenFile};

impl Engine {
    /// This node now has `files` of `ws` open: every reader with a session
    /// hears it (nothing is sent when nothing changed).
    pub(super) fn local_presence(&mut self, ws: WorkspaceId, mut files: Vec<OpenFile>) {
        files.sort();
        files.dedup();
        files.truncate(MAX_PRESENCE_FILES);
        let before = self.presence.get(&ws).cloned().unwrap_or_default();
        if before == files {
            return;
        }
        if files.is_empty() {
            self.presence.remove(&ws);
        } else {
            self.presence.insert(ws, files.clone());
        }
        let readers: Vec<PeerId> = self
            .sessions
            .iter()
            .filter(|((_, w), s)| *w == ws && s.admitted.is_some_and(|a| a.read))
            .map(|((p, _), _)| *p)
            .collect();
        for peer in readers {
            self.send(
                peer,
                Frame::Presence {
                    workspace: ws,
                    files: files.clone(),
                },
            );
        }
    }

    /// A session just opened: the peer hears what this node has open.
    pub(super) fn greet_with_presence(&mut self, peer: PeerId, ws: WorkspaceId) {
        let reads = self
            .sessions
            .get(&(peer, ws))
            .and_then(|s| s.admitted)
            .is_some_and(|a| a.read);
        if let Some(files) = self.presence.get(&ws).filter(|_| reads) {
            let frame = Frame::Presence {
                workspace: ws,
                files: files.clone(),
            };
            self.send(peer, frame);
        }
    }

    /// A peer says what it has open.
    pub(super) fn peer_presence(&mut self, peer: PeerId, ws: WorkspaceId, files: Vec<OpenFile>) {
        let admitted = self
            .sessions
            .get(&(peer, ws))
            .is_some_and(|s| s.admitted.is_some());
        if !admitted || files.len() > MAX_PRESENCE_FILES {
            self.strike(peer, "presence outside an admitted session");
            return;
        }
        self.event(Event::Presence {
            peer,
            workspace: ws,
            files,
        });
    }
}
