//! One simulated member: the engine's [`Host`] over in-memory Automerge
//! documents, with a durable part that survives a crash and a staged part
//! that does not.

use std::collections::BTreeMap;
use std::rc::Rc;

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, Change, ChangeHash, ROOT};
use ed25519_dalek::SigningKey;
use xencode_protocol::envelope::SignedHead;
use xencode_protocol::ids::actor_id;
use xencode_protocol::sync::{Access, Host, WriteDecision};
use xencode_protocol::{DocId, PeerId, WorkspaceId};

/// The workspace every simulated member shares.
pub const WS: WorkspaceId = WorkspaceId::from_bytes([0x5a; 16]);

/// What every member knows about the team (its access document, modelled).
#[derive(Debug)]
pub struct Team {
    pub keys: Vec<[u8; 32]>,
    pub peers: Vec<PeerId>,
    pub by_peer: BTreeMap<PeerId, usize>,
    pub by_key: BTreeMap<[u8; 32], usize>,
    pub writer: Vec<bool>,
    /// When a member's revocation takes effect (virtual ms).
    pub revoked_at: Vec<Option<u64>>,
    pub docs: Vec<DocId>,
}

impl Team {
    fn revoked(&self, i: usize, now: u64) -> bool {
        self.revoked_at[i].is_some_and(|t| now >= t)
    }

    /// A member's token: its index, bound to its peer id by `admit`.
    pub fn token(i: usize) -> Vec<u8> {
        let mut t = (i as u32).to_le_bytes().to_vec();
        t.extend_from_slice(b"member");
        t
    }
}

/// A member's state.
pub struct SimHost {
    pub index: usize,
    key: SigningKey,
    pub team: Rc<Team>,
    pub docs: BTreeMap<DocId, AutoCommit>,
    sigs: BTreeMap<(DocId, ChangeHash), SignedHead>,
    states: BTreeMap<(PeerId, DocId), Vec<u8>>,
    /// Changes on "disk": they survive a crash.
    durable: BTreeMap<DocId, Vec<Vec<u8>>>,
    /// Applied but not yet committed: lost in a crash.
    staged: Vec<(DocId, Vec<u8>)>,
    /// Changes held (local and applied), for lag.
    pub held: u64,
    edits: u64,
}

impl SimHost {
    pub fn new(index: usize, key: SigningKey, team: Rc<Team>) -> Self {
        Self {
            index,
            key,
            team,
            docs: BTreeMap::new(),
            sigs: BTreeMap::new(),
            states: BTreeMap::new(),
            durable: BTreeMap::new(),
            staged: Vec::new(),
            held: 0,
            edits: 0,
        }
    }

    fn doc_mut(&mut self, doc: DocId) -> &mut AutoCommit {
        self.docs.entry(doc).or_default()
    }

    /// A local edit, signed; persisted at once, as the node persists before
    /// it sends. Returns the change's hash.
    pub fn edit(&mut self, doc: DocId, now: u64) -> Option<ChangeHash> {
        self.edits += 1;
        let actor = ActorId::from(actor_id(&self.team.keys[self.index], 0).as_slice());
        let key = format!("m{}e{}", self.index, self.edits);
        let tag = self.edits;
        let am = self.doc_mut(doc);
        am.set_actor(actor);
        am.put(ROOT, key, tag as i64).ok()?;
        if tag.is_multiple_of(4) {
            am.put(ROOT, "shared", tag as i64).ok()?;
        }
        am.commit_with(CommitOptions::default().with_time(now as i64));
        let change = am.get_last_local_change()?.clone();
        let hash = change.hash();
        let raw = change.raw_bytes().to_vec();
        let sig = SignedHead::sign(&self.key, 0, &WS, &doc, hash.0);
        self.sigs.insert((doc, hash), sig);
        self.durable.entry(doc).or_default().push(raw);
        self.held += 1;
        Some(hash)
    }

    /// A forged change: made in a copy of `doc` under another member's actor
    /// id, signed with this member's key. Nothing here keeps it.
    pub fn forge(
        &mut self,
        doc: DocId,
        now: u64,
        victim: usize,
    ) -> Option<(ChangeHash, Vec<u8>, SignedHead)> {
        let actor = ActorId::from(actor_id(&self.team.keys[victim], 0).as_slice());
        let mut fork = self.doc_mut(doc).fork();
        fork.set_actor(actor);
        fork.put(ROOT, "shared", -1).ok()?;
        fork.commit_with(CommitOptions::default().with_time(now as i64));
        let change = fork.get_last_local_change()?.clone();
        let hash = change.hash();
        let sig = SignedHead::sign(&self.key, 0, &WS, &doc, hash.0);
        Some((hash, change.raw_bytes().to_vec(), sig))
    }

    /// Applied changes the engine asks to persist: staged until the next
    /// commit.
    pub fn stage(&mut self, doc: DocId, changes: Vec<Vec<u8>>, signatures: Vec<SignedHead>) {
        self.held += changes.len() as u64;
        for raw in changes {
            self.staged.push((doc, raw));
        }
        for s in signatures {
            self.sigs.insert((doc, ChangeHash(s.hash)), s);
        }
    }

    pub fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// Makes the staged changes durable.
    pub fn commit(&mut self) {
        for (doc, raw) in self.staged.drain(..) {
            self.durable.entry(doc).or_default().push(raw);
        }
    }

    pub fn save_state(&mut self, peer: PeerId, doc: DocId, state: Vec<u8>) {
        self.states.insert((peer, doc), state);
    }

    /// A crash: memory is lost; the documents come back from what was
    /// durable. Returns how many applied changes were lost.
    pub fn crash(&mut self) -> u64 {
        let lost = self.staged.len() as u64;
        self.staged.clear();
        self.states.clear();
        self.docs.clear();
        self.held = 0;
        for (doc, raws) in &self.durable {
            let changes: Vec<Change> = raws
                .iter()
                .filter_map(|r| Change::from_bytes(r.clone()).ok())
                .collect();
            let mut am = AutoCommit::new();
            if am.apply_changes(changes).is_ok() {
                self.held += raws.len() as u64;
            }
            self.docs.insert(*doc, am);
        }
        lost
    }

    /// Every durable change hash.
    pub fn durable_hashes(&self) -> Vec<ChangeHash> {
        self.durable
            .values()
            .flatten()
            .filter_map(|r| Change::from_bytes(r.clone()).ok().map(|c| c.hash()))
            .collect()
    }

    /// Whether a change is in a document here.
    pub fn holds(&mut self, doc: DocId, hash: &ChangeHash) -> bool {
        self.docs
            .get_mut(&doc)
            .is_some_and(|am| am.get_change_by_hash(hash).is_some())
    }

    /// The heads of every document.
    pub fn heads(&mut self) -> Vec<(DocId, Vec<ChangeHash>)> {
        let docs = self.team.docs.clone();
        docs.into_iter()
            .map(|d| (d, self.doc_mut(d).get_heads()))
            .collect()
    }
}

impl Host for SimHost {
    fn documents(&self, ws: &WorkspaceId) -> Vec<DocId> {
        if *ws == WS {
            self.team.docs.clone()
        } else {
            Vec::new()
        }
    }
    fn document(&mut self, ws: &WorkspaceId, doc: &DocId) -> Option<&mut AutoCommit> {
        (*ws == WS && self.team.docs.contains(doc)).then(|| self.doc_mut(*doc))
    }
    fn signature(&self, _ws: &WorkspaceId, doc: &DocId, hash: &ChangeHash) -> Option<SignedHead> {
        self.sigs.get(&(*doc, *hash)).cloned()
    }
    fn token(&self, ws: &WorkspaceId) -> Option<Vec<u8>> {
        (*ws == WS).then(|| Team::token(self.index))
    }
    fn workspaces_for(&self, peer: &PeerId) -> Vec<WorkspaceId> {
        if self.team.by_peer.contains_key(peer) {
            vec![WS]
        } else {
            Vec::new()
        }
    }
    fn admit(
        &mut self,
        peer: &PeerId,
        ws: &WorkspaceId,
        token: &[u8],
        now: u64,
    ) -> Result<Access, String> {
        if *ws != WS || self.team.revoked(self.index, now) {
            return Err("not a member".into());
        }
        let idx = token
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(|b| u32::from_le_bytes(b) as usize)
            .filter(|i| token.get(4..) == Some(b"member".as_slice()) && *i < self.team.peers.len())
            .ok_or("malformed token")?;
        if self.team.peers[idx] != *peer {
            return Err("token bound to another peer".into());
        }
        if self.team.revoked(idx, now) {
            return Err("revoked".into());
        }
        Ok(Access {
            read: true,
            write: self.team.writer[idx],
        })
    }
    fn may_write(
        &mut self,
        _ws: &WorkspaceId,
        _doc: &DocId,
        author: &[u8; 32],
        change: &Change,
    ) -> WriteDecision {
        let Some(&i) = self.team.by_key.get(author) else {
            return WriteDecision::Deny;
        };
        // Deterministic: a function of the change (its time is part of it).
        let before_revocation = self.team.revoked_at[i]
            .is_none_or(|t| change.timestamp() < i64::try_from(t).unwrap_or(i64::MAX));
        if self.team.writer[i] && before_revocation {
            WriteDecision::Allow
        } else {
            WriteDecision::Deny
        }
    }
    fn sync_state(&self, peer: &PeerId, doc: &DocId) -> Option<Vec<u8>> {
        self.states.get(&(*peer, *doc)).cloned()
    }
}
