//! One simulated member: the engine's [`Host`] over in-memory Automerge
//! documents, with a durable part that survives a crash and a staged part
//! that does not — and the node's own authorization: sessions admitted by
//! `protocol::policy::admit` on real biscuit tokens, every received change
//! judged by `protocol::policy::WriteRule` against the member's copy of the
//! access document. What the simulations prove is the rule users run.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use automerge::sync::{ChunkList, SyncDoc};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, Change, ChangeHash, ROOT};
use ed25519_dalek::SigningKey;
use xencode_protocol::api::Role;
use xencode_protocol::capability::{self, CapabilityError, Verified};
use xencode_protocol::envelope::{SignedHead, encode_citation};
use xencode_protocol::ids::actor_id;
use xencode_protocol::policy::{self, AccessDoc, AdmitError, MemberState, WriteRule, schema};
use xencode_protocol::sync::{Access, Host, WriteDecision};
use xencode_protocol::{DocId, PeerId, WorkspaceId};

pub use crate::team::{Team, WS};
use crate::team::{stamp, unix_ms};

/// Tokens whose verification a member remembers (as the node's verifier).
const MAX_VERIFIED: usize = 4096;

/// A change made and signed but kept nowhere: what an attacker sends.
pub struct Loose {
    pub hash: ChangeHash,
    pub raw: Vec<u8>,
    pub signature: SignedHead,
}

/// A member's state.
pub struct SimHost {
    pub index: usize,
    key: SigningKey,
    peer: String,
    pub team: Rc<Team>,
    pub docs: BTreeMap<DocId, AutoCommit>,
    sigs: BTreeMap<(DocId, ChangeHash), SignedHead>,
    states: BTreeMap<(PeerId, DocId), Vec<u8>>,
    /// Changes on "disk": they survive a crash.
    durable: BTreeMap<DocId, Vec<Vec<u8>>>,
    /// Applied but not yet committed: lost in a crash.
    staged: Vec<(DocId, Vec<u8>)>,
    /// Changes held (local and applied) outside the access document, for lag.
    pub held: u64,
    edits: u64,
    rule: WriteRule,
    verified: HashMap<Vec<u8>, Result<Verified, CapabilityError>>,
    /// Accept every change whatever the rule says: only for the test that
    /// the invariants catch a broken rule.
    pub(crate) rule_disabled: bool,
}

impl SimHost {
    pub fn new(index: usize, key: SigningKey, team: Rc<Team>) -> Self {
        let mut host = Self {
            index,
            key,
            peer: team.peers[index].to_string(),
            docs: BTreeMap::new(),
            sigs: BTreeMap::new(),
            states: BTreeMap::new(),
            durable: BTreeMap::from([(team.access, vec![team.genesis.clone()])]),
            staged: Vec::new(),
            held: 0,
            edits: 0,
            rule: WriteRule::default(),
            verified: HashMap::new(),
            rule_disabled: false,
            team,
        };
        let sig = host.team.genesis_signature.clone();
        host.sigs
            .insert((host.team.access, ChangeHash(sig.hash)), sig);
        host.load();
        host
    }

    fn doc_mut(&mut self, doc: DocId) -> &mut AutoCommit {
        self.docs.entry(doc).or_default()
    }

    fn actor(&self) -> ActorId {
        ActorId::from(actor_id(&self.team.keys[self.index], 0).as_slice())
    }

    /// This member's copy of the access document.
    pub fn access(&mut self) -> AccessDoc<'_> {
        let access = self.team.access;
        AccessDoc(self.doc_mut(access))
    }

    /// What this member's access document says of it now.
    pub fn own_state(&mut self) -> MemberState {
        let peer = self.peer.clone();
        self.access().member_state(&peer)
    }

    /// Whether this member's node lets it write at `now`, as the node
    /// checks its own user's writes (role, revocation, expiry).
    pub fn may_edit(&mut self, now: u64) -> bool {
        let peer = self.peer.clone();
        self.access()
            .effective_role(&peer, unix_ms(now))
            .is_some_and(|r| r >= Role::Developer)
    }

    /// A change to `doc` under `actor`, citing this member's access heads,
    /// signed with this member's key, in a copy of the document: nothing
    /// here keeps it. Every fourth also writes a key every member writes,
    /// so concurrent edits conflict.
    fn loose_change(&mut self, doc: DocId, now: u64, actor: ActorId) -> Option<Loose> {
        self.edits += 1;
        let tag = self.edits as i64;
        let key = format!("m{}e{tag}", self.index);
        let cites = encode_citation(&self.doc_mut(self.team.access).get_heads());
        let mut fork = self.doc_mut(doc).fork();
        fork.set_actor(actor);
        fork.put(ROOT, key, tag).ok()?;
        if tag % 4 == 0 {
            fork.put(ROOT, "shared", tag).ok()?;
        }
        self.sign(doc, &mut fork, now, Some(cites))
    }

    /// A change to `doc` by this member, kept nowhere.
    pub fn loose_edit(&mut self, doc: DocId, now: u64) -> Option<Loose> {
        let actor = self.actor();
        self.loose_change(doc, now, actor)
    }

    /// Commits what `am` has staged, at `now`, with `message`; signs it.
    fn sign(
        &self,
        doc: DocId,
        am: &mut AutoCommit,
        now: u64,
        message: Option<String>,
    ) -> Option<Loose> {
        let mut options = CommitOptions::default().with_time(stamp(now));
        if let Some(m) = message {
            options = options.with_message(m);
        }
        am.commit_with(options)?;
        let change = am.get_last_local_change()?.clone();
        let hash = change.hash();
        Some(Loose {
            hash,
            raw: change.raw_bytes().to_vec(),
            signature: SignedHead::sign(&self.key, 0, &WS, &doc, hash.0),
        })
    }

    /// Keeps a change this member made: signature, durable record, held.
    fn keep(&mut self, doc: DocId, loose: &Loose) -> Option<()> {
        let change = Change::from_bytes(loose.raw.clone()).ok()?;
        xencode_protocol::apply::apply_changes(self.doc_mut(doc), [change]).ok()?;
        self.sigs.insert((doc, loose.hash), loose.signature.clone());
        self.durable.entry(doc).or_default().push(loose.raw.clone());
        if doc != self.team.access {
            self.held += 1;
        }
        Some(())
    }

    /// A local edit, citing the access heads this member sees, signed;
    /// persisted at once, as the node persists before it sends. Whether
    /// the member may write is the caller's business (an honest node
    /// checks [`Self::may_edit`] first; a tampered one does not). Returns
    /// the change, its bytes and its signature.
    pub fn edit(&mut self, doc: DocId, now: u64) -> Option<Loose> {
        let loose = self.loose_edit(doc, now)?;
        self.keep(doc, &loose)?;
        Some(loose)
    }

    /// An access-document change by this member revoking `target` (a
    /// member's peer id), signed and kept nowhere.
    pub fn loose_revocation(&mut self, target: &str, now: u64) -> Option<Loose> {
        let access = self.team.access;
        let actor = self.actor();
        let by = self.peer.clone();
        let mut fork = self.doc_mut(access).fork();
        fork.set_actor(actor);
        schema::revoke(&mut fork, target, &by, unix_ms(now)).ok()?;
        self.sign(access, &mut fork, now, None)
    }

    /// Revokes `target` in the access document, as an admin's node does;
    /// persisted. Returns the change's hash.
    pub fn revoke(&mut self, target: &str, now: u64) -> Option<ChangeHash> {
        let loose = self.loose_revocation(target, now)?;
        self.keep(self.team.access, &loose)?;
        Some(loose.hash)
    }

    /// A change forged in `victim`'s name: made under the victim's actor
    /// id, signed with this member's key. Kept nowhere.
    pub fn forge(&mut self, doc: DocId, now: u64, victim: usize) -> Option<Loose> {
        let actor = ActorId::from(actor_id(&self.team.keys[victim], 0).as_slice());
        self.loose_change(doc, now, actor)
    }

    /// An Automerge sync message for `doc` carrying `changes` in its own
    /// `changes` field, where Automerge would apply them unchecked.
    pub fn message_carrying(&mut self, doc: DocId, changes: Vec<Vec<u8>>) -> Option<Vec<u8>> {
        let mut state = automerge::sync::State::new();
        let mut message = self.doc_mut(doc).sync().generate_sync_message(&mut state)?;
        message.changes = ChunkList::from(changes);
        Some(message.encode())
    }

    /// Applied changes the engine asks to persist: staged until the next
    /// commit.
    pub fn stage(&mut self, doc: DocId, changes: Vec<Vec<u8>>, signatures: Vec<SignedHead>) {
        if doc != self.team.access {
            self.held += changes.len() as u64;
        }
        for raw in changes {
            self.staged.push((doc, raw));
        }
        for s in signatures {
            self.sigs.insert((doc, ChangeHash(s.hash)), s);
        }
    }

    /// A document replaced whole by a checked chunk (already in memory):
    /// its saved form staged as its new base record.
    pub fn stage_snapshot(&mut self, doc: DocId, saved: Vec<u8>, signatures: Vec<SignedHead>) {
        self.staged.push((doc, saved));
        for s in signatures {
            self.sigs.insert((doc, ChangeHash(s.hash)), s);
        }
        self.held = self.count_held();
    }

    /// Changes held outside the access document, counted in the documents.
    fn count_held(&mut self) -> u64 {
        let access = self.team.access;
        self.docs
            .iter_mut()
            .filter(|(d, _)| **d != access)
            .map(|(_, am)| am.get_changes_meta(&[]).len() as u64)
            .sum()
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

    /// The documents, from what is durable.
    fn load(&mut self) {
        self.docs.clear();
        self.held = 0;
        for (doc, raws) in &self.durable {
            // From its last snapshot (a chunk that replaced it), if any.
            let base = raws
                .iter()
                .rposition(|r| xencode_protocol::chunks::is_one_document(r));
            let mut am = base
                .and_then(|i| AutoCommit::load(&raws[i]).ok())
                .unwrap_or_default();
            let changes: Vec<Change> = raws
                .iter()
                .filter(|r| !xencode_protocol::chunks::is_one_document(r))
                .filter_map(|r| Change::from_bytes(r.clone()).ok())
                .collect();
            // One that does not apply is kept as far as it got, as before.
            let _ = xencode_protocol::apply::apply_changes(&mut am, changes);
            self.docs.insert(*doc, am);
        }
        self.held = self.count_held();
    }

    /// A crash: memory is lost (documents, sync states, the decisions and
    /// verifications remembered); the documents come back from what was
    /// durable. Returns how many applied changes were lost.
    pub fn crash(&mut self) -> u64 {
        let lost = self.staged.len() as u64;
        self.staged.clear();
        self.states.clear();
        self.rule = WriteRule::default();
        self.verified.clear();
        self.load();
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

    /// The heads of every document, the access document's first.
    pub fn heads(&mut self) -> Vec<(DocId, Vec<ChangeHash>)> {
        self.team
            .all_docs()
            .into_iter()
            .map(|d| (d, self.doc_mut(d).get_heads()))
            .collect()
    }

    /// The actor of every change in this member's access document.
    pub fn access_authors(&mut self) -> Vec<ActorId> {
        let access = self.team.access;
        self.doc_mut(access)
            .get_changes(&[])
            .iter()
            .map(|c| c.actor_id().clone())
            .collect()
    }
}

impl Host for SimHost {
    fn documents(&self, ws: &WorkspaceId) -> Vec<DocId> {
        if *ws == WS {
            self.team.all_docs()
        } else {
            Vec::new()
        }
    }
    fn document(&mut self, ws: &WorkspaceId, doc: &DocId) -> Option<&mut AutoCommit> {
        (*ws == WS && (self.team.docs.contains(doc) || *doc == self.team.access))
            .then(|| self.doc_mut(*doc))
    }
    fn signature(&self, _ws: &WorkspaceId, doc: &DocId, hash: &ChangeHash) -> Option<SignedHead> {
        self.sigs.get(&(*doc, *hash)).cloned()
    }

    fn token(&self, ws: &WorkspaceId) -> Option<Vec<u8>> {
        (*ws == WS).then(|| self.team.tokens[self.index].clone())
    }
    fn workspaces_for(&self, peer: &PeerId) -> Vec<WorkspaceId> {
        let member = self.docs.get(&self.team.access).is_some_and(|am| {
            matches!(
                AccessDoc(am).member_state(&peer.to_string()),
                MemberState::Member(_)
            )
        });
        if member { vec![WS] } else { Vec::new() }
    }
    /// The node's admission (`policy::admit`), on tokens verified once
    /// each and remembered, as the node's verifier does.
    fn admit(
        &mut self,
        peer: &PeerId,
        ws: &WorkspaceId,
        token: &[u8],
        now: u64,
    ) -> Result<Access, AdmitError> {
        if *ws != WS {
            return Err(AdmitError::UnknownWorkspace);
        }
        let root = self.team.root;
        if self.verified.len() >= MAX_VERIFIED {
            self.verified.clear();
        }
        let verified = self
            .verified
            .entry(token.to_vec())
            .or_insert_with(|| capability::verify(token, &root, now));
        let access = self.docs.entry(self.team.access).or_default();
        policy::admit(
            AccessDoc(access),
            &root,
            Some(verified.as_ref().map_err(Clone::clone)),
            ws,
            peer,
            now,
        )
    }
    /// The node's write rule (`policy::WriteRule`) over this member's
    /// access document.
    fn may_write(
        &mut self,
        ws: &WorkspaceId,
        doc: &DocId,
        author: &[u8; 32],
        change: xencode_protocol::policy::Written<'_>,
    ) -> WriteDecision {
        let is_access = *doc == self.team.access;
        let root = Some(self.team.root);
        let access = self.docs.entry(self.team.access).or_default();
        match self
            .rule
            .may_write(ws, AccessDoc(access), root, is_access, author, change)
        {
            _ if self.rule_disabled => WriteDecision::Allow,
            decision => decision,
        }
    }
    fn sync_state(&self, peer: &PeerId, doc: &DocId) -> Option<Vec<u8>> {
        self.states.get(&(*peer, *doc)).cloned()
    }
}
