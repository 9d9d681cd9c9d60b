//! A hostile member: a [`RawPeer`] admitted to a workspace that answers the
//! sync protocol like a node, so it holds real copies of the documents, and
//! then sends what an honest node never would — its own changes inside the
//! Automerge sync message, in the frame, signed or not — built on the real
//! history (a viewer promoting itself in the access document, say).

use std::collections::BTreeMap;
use std::time::Duration;

use automerge::sync::{self, ChunkList, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, Change, ROOT, ReadDoc};
use ed25519_dalek::SigningKey;
use libp2p::PeerId;
use xencode_protocol::envelope::{SignedHead, encode_citation};
use xencode_protocol::ids::actor_id;
use xencode_protocol::wire::{self, Frame};
use xencode_protocol::{DocId, WorkspaceId};

use crate::raw_peer::{RawPeer, RawRequest};

/// The id a node derives for a workspace's access document.
pub fn access_doc(ws: &WorkspaceId) -> DocId {
    DocId::derive(ws, b"access-document\0")
}

/// The id a node derives for a workspace's index document.
pub fn index_doc(ws: &WorkspaceId) -> DocId {
    DocId::derive(ws, b"index-document\0\0")
}

/// A frame as the raw peer sends it.
pub fn frame(f: &Frame) -> RawRequest {
    RawRequest::honest(wire::encode(f).unwrap_or_default())
}

/// The member's copies of the documents it was sent, and its sync states.
pub struct Member {
    pub raw: RawPeer,
    pub key: SigningKey,
    pub ws: WorkspaceId,
    pub node: PeerId,
    pub docs: BTreeMap<DocId, (AutoCommit, sync::State)>,
    /// Frames other than `Sync` the node sent (`Accept`, `Refuse`, ...).
    pub others: Vec<Frame>,
}

impl Member {
    pub fn new(secret: [u8; 32], ws: WorkspaceId, node: PeerId) -> anyhow::Result<Self> {
        Ok(Self {
            raw: RawPeer::new(secret)?,
            key: SigningKey::from_bytes(&secret),
            ws,
            node,
            docs: BTreeMap::new(),
            others: Vec::new(),
        })
    }

    /// Sends `Open` with `token`.
    pub fn open(&mut self, token: Vec<u8>) {
        let open = Frame::Open {
            workspace: self.ws,
            token,
        };
        self.raw.send(&self.node, frame(&open));
    }

    /// Pumps for `dur`, taking what the node sends: `Sync` frames are
    /// applied and answered (have/need only, as a node does), the rest kept.
    pub async fn sync_for(&mut self, dur: Duration) {
        let deadline = tokio::time::Instant::now() + dur;
        while tokio::time::Instant::now() < deadline {
            self.raw.pump(Duration::from_millis(100)).await;
            for bytes in std::mem::take(&mut self.raw.received) {
                match wire::decode(&bytes) {
                    Ok(Frame::Sync {
                        doc,
                        message,
                        changes,
                        ..
                    }) => self.absorb(doc, message, changes),
                    Ok(other) => self.others.push(other),
                    Err(_) => {}
                }
            }
        }
    }

    fn absorb(&mut self, doc: DocId, message: Option<Vec<u8>>, changes: Vec<Vec<u8>>) {
        let (am, state) = self
            .docs
            .entry(doc)
            .or_insert_with(|| (AutoCommit::new(), sync::State::new()));
        let changes: Vec<Change> = changes
            .into_iter()
            .filter_map(|c| Change::from_bytes(c).ok())
            .collect();
        let _ = xencode_protocol::apply::apply_changes(am, changes);
        let Some(msg) = message.and_then(|m| sync::Message::decode(&m).ok()) else {
            return;
        };
        let _ = am.sync().receive_sync_message(state, msg);
        xencode_protocol::apply::forget_patches(am);
        if let Some(mut reply) = am.sync().generate_sync_message(state) {
            reply.changes = ChunkList::empty();
            let f = Frame::Sync {
                workspace: self.ws,
                doc,
                message: Some(reply.encode()),
                changes: Vec::new(),
                signatures: Vec::new(),
                sent_ms: 0,
            };
            self.raw.send(&self.node, frame(&f));
        }
    }

    /// The member's own change to its copy of `doc`: `edit` runs on the
    /// document with the member's actor, committed citing `cites` (the
    /// access heads, as a node does for files and the index). Returns the
    /// change and the member's signature over it.
    pub fn change(
        &mut self,
        doc: DocId,
        cites: Option<Vec<automerge::ChangeHash>>,
        edit: impl FnOnce(&mut AutoCommit),
    ) -> (Change, SignedHead) {
        let public = self.key.verifying_key().to_bytes();
        let (am, _) = self
            .docs
            .entry(doc)
            .or_insert_with(|| (AutoCommit::new(), sync::State::new()));
        am.set_actor(ActorId::from(actor_id(&public, 0).as_slice()));
        edit(am);
        let mut options = CommitOptions::default();
        if let Some(h) = cites {
            options = options.with_message(encode_citation(&h));
        }
        am.commit_with(options);
        let change = am
            .get_last_local_change()
            .unwrap_or_else(|| panic!("the edit made no change"));
        let sig = SignedHead::sign(&self.key, 0, &self.ws, &doc, change.hash().0);
        (change, sig)
    }

    /// Heads of the member's copy of the access document.
    pub fn access_heads(&mut self) -> Vec<automerge::ChangeHash> {
        let doc = access_doc(&self.ws);
        self.docs
            .get_mut(&doc)
            .map(|(am, _)| am.get_heads())
            .unwrap_or_default()
    }

    /// A sync message for `doc` as Automerge makes one, carrying `changes`
    /// in its own `changes` field.
    pub fn message_carrying(&mut self, doc: DocId, changes: &[&Change]) -> Vec<u8> {
        let mut state = sync::State::new();
        let (am, _) = self
            .docs
            .entry(doc)
            .or_insert_with(|| (AutoCommit::new(), sync::State::new()));
        let mut msg = am
            .sync()
            .generate_sync_message(&mut state)
            .unwrap_or_else(|| panic!("a first sync message"));
        msg.changes = ChunkList::from(
            changes
                .iter()
                .map(|c| c.raw_bytes().to_vec())
                .collect::<Vec<_>>(),
        );
        msg.encode()
    }

    /// Sends one `Sync` frame.
    pub fn send_sync(
        &mut self,
        doc: DocId,
        message: Option<Vec<u8>>,
        changes: Vec<Vec<u8>>,
        signatures: Vec<SignedHead>,
    ) {
        let f = Frame::Sync {
            workspace: self.ws,
            doc,
            message,
            changes,
            signatures,
            sent_ms: 0,
        };
        self.raw.send(&self.node, frame(&f));
    }

    /// A key of the access document's members map, read from the copy.
    pub fn has_member_entry(&self, peer: &str) -> bool {
        let doc = access_doc(&self.ws);
        let Some((am, _)) = self.docs.get(&doc) else {
            return false;
        };
        match am.get(ROOT, "members") {
            Ok(Some((_, members))) => am.get(&members, peer).ok().flatten().is_some(),
            _ => false,
        }
    }
}

/// Puts `members[peer] = {role}` into the access document.
pub fn set_role(am: &mut AutoCommit, peer: &str, role: &str) {
    let members = match am.get(ROOT, "members") {
        Ok(Some((_, m))) => m,
        _ => am
            .put_object(ROOT, "members", automerge::ObjType::Map)
            .unwrap_or_else(|e| panic!("members: {e}")),
    };
    let entry = am
        .put_object(&members, peer, automerge::ObjType::Map)
        .unwrap_or_else(|e| panic!("entry: {e}"));
    am.put(&entry, "role", role)
        .unwrap_or_else(|e| panic!("role: {e}"));
}

/// Puts `revoked[target] = {kind, by}` into the access document.
pub fn revoke_in(am: &mut AutoCommit, target: &str, kind: &str, by: &str) {
    let revoked = match am.get(ROOT, "revoked") {
        Ok(Some((_, r))) => r,
        _ => am
            .put_object(ROOT, "revoked", automerge::ObjType::Map)
            .unwrap_or_else(|e| panic!("revoked: {e}")),
    };
    let entry = am
        .put_object(&revoked, target, automerge::ObjType::Map)
        .unwrap_or_else(|e| panic!("entry: {e}"));
    am.put(&entry, "kind", kind)
        .unwrap_or_else(|e| panic!("kind: {e}"));
    am.put(&entry, "by", by)
        .unwrap_or_else(|e| panic!("by: {e}"));
}
