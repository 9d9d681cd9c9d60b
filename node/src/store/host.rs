//! The sync engine's view of the store ([`Host`]): the loaded documents,
//! stored signatures, memberships and the access rules.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{AutoCommit, ChangeHash};
use redb::{Database, ReadableDatabase};
use xencode_protocol::api::Role;
use xencode_protocol::capability::{self, Right};
use xencode_protocol::envelope::SignedHead;
use xencode_protocol::sync::{Access, Host, WriteDecision};
use xencode_protocol::{DocId, PeerId, WorkspaceId};

use super::tables::{Membership, SIGNATURES, SYNC_STATES};
use crate::workspace::{Author, Doc, MemberState, Workspace, access_doc_id};

/// Most documents a workspace may grow to through sync.
const MAX_DOCS_PER_WORKSPACE: usize = 100_000;

pub(super) struct HostView<'a> {
    pub workspaces: &'a mut BTreeMap<WorkspaceId, Workspace>,
    pub memberships: &'a BTreeMap<WorkspaceId, Membership>,
    pub db: Option<&'a Database>,
    pub author: &'a Author,
}

impl HostView<'_> {
    fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Option<T>) -> Option<T> {
        let tx = self.db?.begin_read().ok()?;
        f(&tx)
    }
}

/// The root key of a workspace: from the access document, or from the
/// membership record of a workspace joined but not yet synced.
pub(super) fn root_key(
    ws: &Workspace,
    memberships: &BTreeMap<WorkspaceId, Membership>,
) -> Option<[u8; 32]> {
    memberships
        .get(&ws.id)
        .map(|m| m.root_key)
        .or_else(|| ws.root_key())
}

impl Host for HostView<'_> {
    fn documents(&self, ws: &WorkspaceId) -> Vec<DocId> {
        let Some(w) = self.workspaces.get(ws) else {
            return Vec::new();
        };
        let mut docs = vec![w.access.id, w.index.id];
        let mut files: BTreeSet<DocId> = w.file_doc_ids().into_iter().collect();
        files.extend(w.files.keys().copied());
        docs.extend(files);
        docs
    }

    fn document(&mut self, ws: &WorkspaceId, doc: &DocId) -> Option<&mut AutoCommit> {
        let w = self.workspaces.get_mut(ws)?;
        if *doc == w.access.id {
            return Some(&mut w.access.am);
        }
        if *doc == w.index.id {
            return Some(&mut w.index.am);
        }
        if !w.files.contains_key(doc) && w.files.len() >= MAX_DOCS_PER_WORKSPACE {
            return None;
        }
        let actor = self.author.actor.clone();
        Some(
            &mut w
                .files
                .entry(*doc)
                .or_insert_with(|| Doc::new(*doc, &actor))
                .am,
        )
    }

    fn signature(&self, _ws: &WorkspaceId, doc: &DocId, hash: &ChangeHash) -> Option<SignedHead> {
        self.read(|tx| {
            let table = tx.open_table(SIGNATURES).ok()?;
            let value = table.get((*doc.as_bytes(), hash.0)).ok()??;
            postcard::from_bytes(value.value()).ok()
        })
    }

    fn token(&self, ws: &WorkspaceId) -> Option<Vec<u8>> {
        self.memberships.get(ws).map(|m| m.token.clone())
    }

    fn workspaces_for(&self, peer: &PeerId) -> Vec<WorkspaceId> {
        let peer = peer.to_string();
        self.workspaces
            .values()
            .filter(|w| {
                matches!(w.member_state(&peer), MemberState::Member(_))
                    || self
                        .memberships
                        .get(&w.id)
                        .is_some_and(|m| m.contacts.iter().any(|(p, _)| *p == peer))
            })
            .map(|w| w.id)
            .collect()
    }

    fn admit(
        &mut self,
        peer: &PeerId,
        ws: &WorkspaceId,
        token: &[u8],
        now_ms: u64,
    ) -> Result<Access, String> {
        let w = self.workspaces.get(ws).ok_or("not authorized")?;
        if w.member_state(&peer.to_string()) == MemberState::Revoked {
            return Err("this peer's membership was revoked".into());
        }
        let root = root_key(w, self.memberships).ok_or("not authorized")?;
        let grant = capability::authorize(token, &root, ws, peer, &w.revoked_token_ids(), now_ms)
            .map_err(|e| e.to_string())?;
        Ok(Access {
            read: grant.role.allows(Right::Read),
            write: grant.role.allows(Right::Write),
        })
    }

    fn may_write(&mut self, ws: &WorkspaceId, doc: &DocId, author: &[u8; 32]) -> WriteDecision {
        let Some(w) = self.workspaces.get(ws) else {
            return WriteDecision::Deny;
        };
        if *doc == access_doc_id(ws) && root_key(w, self.memberships) == Some(*author) {
            // The root writes the access document from the first change on.
            return WriteDecision::Allow;
        }
        let Ok(peer) = xencode_protocol::ids::peer_id_of(author) else {
            return WriteDecision::Deny;
        };
        let needed = if *doc == access_doc_id(ws) {
            Role::Admin
        } else {
            Role::Developer
        };
        match w.member_state(&peer.to_string()) {
            MemberState::Member(role) if role >= needed => WriteDecision::Allow,
            MemberState::Member(_) | MemberState::Revoked => WriteDecision::Deny,
            MemberState::Unknown => WriteDecision::Unknown,
        }
    }

    fn sync_state(&self, peer: &PeerId, doc: &DocId) -> Option<Vec<u8>> {
        let peer = peer.to_string();
        self.read(|tx| {
            let table = tx.open_table(SYNC_STATES).ok()?;
            let value = table.get((peer.as_str(), *doc.as_bytes())).ok()??;
            Some(value.value().to_vec())
        })
    }
}
