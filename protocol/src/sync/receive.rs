//! Receiving: pending buffer, signature coverage, authorization, applying.

use std::collections::{BTreeMap, BTreeSet};

use automerge::sync::{self, SyncDoc};
use automerge::{ActorId, Change, ChangeHash};
use libp2p_identity::PeerId;

use super::{Engine, Event, Host, Output, PendingChange, RejectReason, WriteDecision, guarded};
use crate::envelope::SignedHead;
use crate::ids::{DocId, WorkspaceId};

/// Most signatures kept waiting for their change, per document.
const MAX_WAITING_SIGNATURES: usize = 4096;

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn receive_sync(
        &mut self,
        host: &mut impl Host,
        peer: PeerId,
        ws: WorkspaceId,
        doc: DocId,
        received: super::Received,
        now_ms: u64,
    ) {
        let super::Received {
            message,
            changes,
            signatures,
            sent_ms,
        } = received;
        let Some(had_message) = self.take_message(host, peer, ws, doc, message) else {
            return;
        };
        self.take_changes(host, peer, ws, doc, changes, signatures, sent_ms, now_ms);
        if had_message {
            self.answer(host, peer, ws, doc);
        }
    }

    /// Answers `peer`'s sync message for `doc` once its frame is taken in:
    /// now, or at `settle` (after the apply) when applies are batched.
    fn answer(&mut self, host: &mut impl Host, peer: PeerId, ws: WorkspaceId, doc: DocId) {
        if self.batch_applies {
            self.deferred.entry((ws, doc)).or_default().insert(peer);
        } else {
            self.generate(host, peer, ws, doc);
        }
    }

    /// A document chunk (`Frame::Chunk`): loaded into a scratch document
    /// and, when every change it adds is covered by a verified signature of
    /// its author, follows its author's sequence, and passes the write rule
    /// on its metadata, and it holds everything this node's copy holds, it
    /// replaces the copy whole: no change is rebuilt, copied or applied one
    /// by one. Otherwise — a change refused, unsigned, or not decidable
    /// from metadata (the access document), or local changes the chunk
    /// lacks — it is taken apart and every change it adds goes through the
    /// per-change path, exactly as if it had come alone. Nothing unchecked
    /// is applied either way.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn receive_chunk(
        &mut self,
        host: &mut impl Host,
        peer: PeerId,
        ws: WorkspaceId,
        doc: DocId,
        chunk: Vec<u8>,
        received: super::Received,
        now_ms: u64,
    ) {
        // Sized before Automerge inflates it, and one document only (a
        // document chunk followed by change chunks would load those changes
        // unchecked).
        let cap = self.limits.max_pending_bytes;
        if !crate::chunks::is_one_document(&chunk)
            || crate::chunks::inflated_len(&chunk, cap).is_err()
            || received.signatures.len() > super::send::MAX_CHUNK_SIGNATURES
        {
            self.reject_frame(
                peer,
                ws,
                RejectReason::Malformed,
                "malformed document chunk",
            );
            return;
        }
        let Some(had_message) = self.take_message(host, peer, ws, doc, received.message) else {
            return;
        };
        let scratch = match guarded(|| automerge::AutoCommit::load(&chunk)) {
            Some(Ok(scratch)) => scratch,
            _ => {
                self.reject_frame(
                    peer,
                    ws,
                    RejectReason::Malformed,
                    "document chunk does not load",
                );
                return;
            }
        };
        let signatures: Vec<SignedHead> = received
            .signatures
            .into_iter()
            .filter(|sig| sig.verify(&ws, &doc).is_ok())
            .collect();
        match self.whole_chunk(host, ws, doc, scratch, &signatures) {
            Ok(added) => {
                let Some(am) = host.document(&ws, &doc) else {
                    return;
                };
                // Pending changes the chunk brought are done with.
                if let Some(pending) = self.pending.get_mut(&(ws, doc)) {
                    pending.changes.retain(|h, pc| {
                        let keep = am.get_change_meta_by_hash(h).is_none();
                        if !keep {
                            self.pending_bytes -= pc.size;
                        }
                        keep
                    });
                }
                self.seqs.remove(&doc);
                self.remember_signatures(doc, &signatures);
                self.outputs.push_back(Output::Snapshot {
                    workspace: ws,
                    doc,
                    saved: chunk,
                    signatures,
                });
                // Every head now came from the peer's own document.
                if let Some(heads) = host.heads(&ws, &doc) {
                    let heads: BTreeSet<ChangeHash> = heads.into_iter().collect();
                    self.advance_shared(host, peer, ws, doc, &heads);
                }
                self.event(Event::Applied {
                    peer,
                    workspace: ws,
                    doc,
                    changes: added,
                    sent_ms: received.sent_ms,
                });
                self.changed(host, &ws, &doc, Some(peer));
                self.resolve(host, ws, doc);
            }
            Err(Some(changes)) => {
                self.take_changes(
                    host,
                    peer,
                    ws,
                    doc,
                    changes,
                    signatures,
                    received.sent_ms,
                    now_ms,
                );
            }
            Err(None) => {}
        }
        if had_message {
            self.answer(host, peer, ws, doc);
        }
    }

    /// Puts `scratch` in place of `doc` if it may go whole: how many changes
    /// it added. Else the raw changes it adds, to be checked one by one
    /// (`Err(None)`: it adds nothing).
    fn whole_chunk(
        &mut self,
        host: &mut impl Host,
        ws: WorkspaceId,
        doc: DocId,
        mut scratch: automerge::AutoCommit,
        signatures: &[SignedHead],
    ) -> Result<usize, Option<Vec<Vec<u8>>>> {
        let Some(am) = host.document(&ws, &doc) else {
            return Err(None);
        };
        let local = am.get_heads();
        let holds_ours = local
            .iter()
            .all(|h| scratch.get_change_meta_by_hash(h).is_some());
        // What the chunk adds: every change not here (all past our heads,
        // when it holds everything we hold).
        let added: Vec<automerge::ChangeMetadata<'static>> = if holds_ours {
            scratch
                .get_changes_meta(&local)
                .into_iter()
                .map(automerge::ChangeMetadata::into_owned)
                .collect()
        } else {
            scratch
                .get_changes_meta(&[])
                .into_iter()
                .filter(|m| am.get_change_meta_by_hash(&m.hash).is_none())
                .map(automerge::ChangeMetadata::into_owned)
                .collect()
        };
        if added.is_empty() {
            return Err(None);
        }
        let whole = holds_ours && self.chunk_passes(host, ws, doc, &added, signatures);
        let Some(am) = host.document(&ws, &doc) else {
            return Err(None);
        };
        if whole {
            scratch.set_actor(am.get_actor().clone());
            *am = scratch;
            // Every added change passed under its author's signature.
            for s in signatures {
                self.heard_from(&s.author);
            }
            return Ok(added.len());
        }
        // Taken apart, in causal order (metadata comes in it).
        Err(Some(
            added
                .iter()
                .filter_map(|m| {
                    guarded(|| scratch.get_change_by_hash(&m.hash))
                        .flatten()
                        .map(|c| c.raw_bytes().to_vec())
                })
                .collect(),
        ))
    }

    /// Whether every change in `added` (a chunk's, past our heads) is
    /// covered by a signature of its author, follows its author's last
    /// sequence number here, and is allowed by the write rule.
    fn chunk_passes(
        &mut self,
        host: &mut impl Host,
        ws: WorkspaceId,
        doc: DocId,
        added: &[automerge::ChangeMetadata<'static>],
        signatures: &[SignedHead],
    ) -> bool {
        let index: BTreeMap<ChangeHash, usize> =
            added.iter().enumerate().map(|(i, m)| (m.hash, i)).collect();
        let mut author: Vec<Option<[u8; 32]>> = vec![None; added.len()];
        for sig in signatures {
            let actor = ActorId::from(sig.actor().as_slice());
            let reached = covered(ChangeHash(sig.hash), &actor, |h| {
                index
                    .get(h)
                    .map(|&i| (added[i].actor.as_ref(), added[i].deps.as_slice()))
            });
            for h in reached {
                if let Some(&i) = index.get(&h) {
                    author[i].get_or_insert(sig.author);
                }
            }
        }
        // Sequence numbers: each author's added changes continue its last
        // one here, with no gap or repeat.
        let Some(am) = host.document(&ws, &doc) else {
            return false;
        };
        let last = last_seqs(am);
        let mut seqs: BTreeMap<&ActorId, Vec<u64>> = BTreeMap::new();
        for m in added {
            seqs.entry(m.actor.as_ref()).or_default().push(m.seq);
        }
        for (actor, mut s) in seqs {
            s.sort_unstable();
            let from = last.get(actor).copied().unwrap_or(0);
            if s.iter()
                .enumerate()
                .any(|(i, seq)| *seq != from + 1 + i as u64)
            {
                return false;
            }
        }
        added.iter().zip(&author).all(|(m, a)| {
            a.is_some_and(|a| {
                host.may_write(&ws, &doc, &a, crate::policy::Written::Meta(m))
                    == WriteDecision::Allow
            })
        })
    }

    /// The checks every sync or chunk frame passes first, then its sync
    /// message given to Automerge: `None` when the frame is refused or
    /// dropped, else whether it carried a message.
    fn take_message(
        &mut self,
        host: &mut impl Host,
        peer: PeerId,
        ws: WorkspaceId,
        doc: DocId,
        message: Option<Vec<u8>>,
    ) -> Option<bool> {
        let may_write = self
            .sessions
            .get(&(peer, ws))
            .and_then(|s| s.admitted)
            .is_some_and(|a| a.write);
        if !may_write && !host.has_document(&ws, &doc) {
            // A peer that may not write can bring no content to a document
            // this node lacks; creating it would only let a viewer fill the
            // workspace with empty documents. Dropped without a strike: an
            // honest viewer may simply have heard of the document first.
            return None;
        }
        if host.document(&ws, &doc).is_none() {
            self.strike(peer, "sync for a document this node will not hold");
            return None;
        }
        // Decode the sync message first: a frame whose message is bad is
        // refused whole, its changes included.
        let msg = match message.map(|bytes| guarded(|| sync::Message::decode(&bytes))) {
            None => None,
            Some(Some(Ok(msg))) => Some(msg),
            Some(_) => {
                self.reject_frame(
                    peer,
                    ws,
                    RejectReason::Malformed,
                    "undecodable sync message",
                );
                return None;
            }
        };
        if msg.as_ref().is_some_and(|m| !m.changes.is_empty()) {
            // Automerge applies a sync message's own changes with no hook
            // for the write rule: they never reach it. Honest nodes send
            // changes only beside the message, where they are checked.
            self.reject_frame(
                peer,
                ws,
                RejectReason::InSyncMessage,
                "changes inside a sync message",
            );
            return None;
        }
        // The sync message goes to Automerge before the changes are applied:
        // applying first would make Automerge believe the sender already knows
        // our new heads, and it would never acknowledge them.
        let had_message = msg.is_some();
        if let Some(msg) = msg {
            let session = self.sessions.get_mut(&(peer, ws))?;
            let ds = session.doc(host, &peer, doc);
            let am = host.document(&ws, &doc)?;
            let received = guarded(|| am.sync().receive_sync_message(&mut ds.state, msg));
            crate::apply::forget_patches(am);
            if !matches!(received, Some(Ok(()))) {
                // The state may be half-updated: start this document afresh.
                ds.state = sync::State::new();
                self.strike(peer, "sync message refused by Automerge");
            }
        }
        Some(had_message)
    }

    /// Received changes and signatures into the pending buffer, checked,
    /// and applied when ready (at `settle` when applies are batched).
    #[allow(clippy::too_many_arguments)]
    fn take_changes(
        &mut self,
        host: &mut impl Host,
        peer: PeerId,
        ws: WorkspaceId,
        doc: DocId,
        changes: Vec<Vec<u8>>,
        signatures: Vec<SignedHead>,
        sent_ms: u64,
        now_ms: u64,
    ) {
        let Some(am) = host.document(&ws, &doc) else {
            return;
        };
        let mut malformed = 0;
        let mut fresh = Vec::new();
        for raw in changes {
            // Sized before Automerge inflates it: a deflate bomb is a strike,
            // not gigabytes of memory.
            let Ok(size) = crate::chunks::inflated_len(&raw, self.limits.max_pending_bytes) else {
                malformed += 1;
                continue;
            };
            match guarded(|| Change::from_bytes(raw.clone())) {
                Some(Ok(change)) if canonical(&change) => {
                    let hash = change.hash();
                    if am.get_change_meta_by_hash(&hash).is_none() {
                        fresh.push((hash, change, raw, size));
                    }
                }
                _ => malformed += 1,
            }
        }
        let mut overflow = 0;
        let pending = self.pending.entry((ws, doc)).or_default();
        for (hash, change, raw, size) in fresh {
            if pending.changes.contains_key(&hash) {
                continue;
            }
            if self.pending_bytes + size > self.limits.max_pending_bytes {
                overflow += 1;
                continue;
            }
            self.pending_bytes += size;
            let actor = change.actor_id().clone();
            pending.changes.insert(
                hash,
                PendingChange {
                    change,
                    raw,
                    size,
                    actor,
                    verified: None,
                    from: peer,
                    since_ms: now_ms,
                    sent_ms,
                },
            );
        }
        let mut bad_signatures = 0;
        for sig in signatures {
            if sig.verify(&ws, &doc).is_ok() {
                pending.signatures.push((sig, peer));
            } else {
                bad_signatures += 1;
            }
        }
        if pending.signatures.len() > MAX_WAITING_SIGNATURES {
            let excess = pending.signatures.len() - MAX_WAITING_SIGNATURES;
            pending.signatures.drain(..excess);
        }
        if overflow > 0 {
            self.sent_again(host, peer, ws, doc, false);
        }
        for (reason, count) in [
            (RejectReason::Malformed, malformed),
            (RejectReason::BadSignature, bad_signatures),
            (RejectReason::Overflow, overflow),
        ] {
            if count > 0 {
                self.event(Event::Rejected {
                    peer,
                    workspace: ws,
                    reason,
                    count,
                });
                self.strike(peer, reason.as_str());
            }
        }
        if self.batch_applies {
            // Applied at `settle`.
            self.deferred.entry((ws, doc)).or_default();
            return;
        }
        self.resolve(host, ws, doc);
    }

    /// Keeps signatures just received for `doc` in memory (bounded: cleared
    /// when full), so a change relayed before they are persisted travels
    /// with them.
    fn remember_signatures(&mut self, doc: DocId, signatures: &[SignedHead]) {
        if self.recent_signatures.len() + signatures.len() > super::MAX_RECENT_SIGNATURES {
            self.recent_signatures.clear();
        }
        for s in signatures {
            self.recent_signatures
                .insert((doc, ChangeHash(s.hash)), s.clone());
        }
    }

    /// Refuses a whole frame: counted under `reason`, and a strike.
    fn reject_frame(&mut self, peer: PeerId, ws: WorkspaceId, reason: RejectReason, why: &str) {
        self.event(Event::Rejected {
            peer,
            workspace: ws,
            reason,
            count: 1,
        });
        self.strike(peer, why);
    }

    /// Marks pending changes covered by verified signatures, drops those of
    /// authors who may not write, and applies every change that is ready.
    /// Resolves the pending changes of `doc`, then of the workspace's other
    /// documents as long as anything was applied: changes elsewhere may have
    /// waited for these (the access heads they cite), and changes here for
    /// their dependencies.
    ///
    /// Only documents with changes still pending are passed over: a
    /// document whose changes all applied leaves the buffer at once, so a
    /// burst of new documents costs each frame its own, not every earlier one.
    pub(super) fn resolve(&mut self, host: &mut impl Host, ws: WorkspaceId, doc: DocId) {
        let mut progressed = self.resolve_doc(host, ws, doc);
        self.forget_if_done(ws, doc);
        let mut rounds = 0;
        while progressed && rounds < super::MAX_RESOLVE_ROUNDS {
            rounds += 1;
            progressed = false;
            let docs: Vec<DocId> = self
                .pending
                .range((ws, DocId::from_bytes([0; 16]))..)
                .take_while(|((w, _), _)| *w == ws)
                .filter(|(_, p)| !p.changes.is_empty())
                .map(|((_, d), _)| *d)
                .collect();
            for d in docs {
                progressed |= self.resolve_doc(host, ws, d);
                self.forget_if_done(ws, d);
            }
        }
    }

    /// Drops the pending entry of `doc` once nothing in it waits.
    fn forget_if_done(&mut self, ws: WorkspaceId, doc: DocId) {
        if self
            .pending
            .get(&(ws, doc))
            .is_some_and(|p| p.changes.is_empty() && p.signatures.is_empty())
        {
            self.pending.remove(&(ws, doc));
        }
    }

    /// One pass over the pending changes of `doc`; whether any was applied.
    fn resolve_doc(&mut self, host: &mut impl Host, ws: WorkspaceId, doc: DocId) -> bool {
        let Some(pending) = self.pending.get_mut(&(ws, doc)) else {
            return false;
        };
        let Some(am) = host.document(&ws, &doc) else {
            return false;
        };
        // 1. Signature coverage, walking hashes back from each signed head.
        let mut waiting = Vec::new();
        for (sig, from) in std::mem::take(&mut pending.signatures) {
            let head = ChangeHash(sig.hash);
            if pending.changes.contains_key(&head) {
                let actor = ActorId::from(sig.actor().as_slice());
                let reached = covered(head, &actor, |h| {
                    pending
                        .changes
                        .get(h)
                        .map(|pc| (&pc.actor, pc.change.deps()))
                });
                for h in reached {
                    if let Some(pc) = pending.changes.get_mut(&h)
                        && pc.verified.is_none()
                    {
                        pc.verified = Some(sig.author);
                    }
                }
                pending.covering.insert(head, sig);
            } else if am.get_change_meta_by_hash(&head).is_none() {
                waiting.push((sig, from));
            }
        }
        pending.signatures = waiting;

        // 2. Authorization of every verified author: refused now, allowed, or
        //    waiting until the membership tells.
        let mut allowed: BTreeSet<ChangeHash> = BTreeSet::new();
        let mut refused: Vec<ChangeHash> = Vec::new();
        for (hash, pc) in &pending.changes {
            if let Some(author) = pc.verified {
                match host.may_write(&ws, &doc, &author, (&pc.change).into()) {
                    WriteDecision::Allow => {
                        allowed.insert(*hash);
                    }
                    WriteDecision::Deny => refused.push(*hash),
                    WriteDecision::Unknown => {}
                }
            }
        }
        let mut rejected: BTreeMap<(PeerId, RejectReason), usize> = BTreeMap::new();
        for hash in refused {
            if let Some(pc) = pending.changes.remove(&hash) {
                self.pending_bytes -= pc.size;
                *rejected
                    .entry((pc.from, RejectReason::Unauthorized))
                    .or_default() += 1;
            }
        }

        // 3. Apply what is complete: verified, dependencies present, next seq.
        let Some(am) = host.document(&ws, &doc) else {
            return false;
        };
        let seqs = self.seqs.entry(doc).or_insert_with(|| last_seqs(am));
        let mut ready: Vec<ChangeHash> = Vec::new();
        let mut ready_set: BTreeSet<ChangeHash> = BTreeSet::new();
        let mut next_seq: BTreeMap<ActorId, u64> = BTreeMap::new();
        loop {
            let mut progressed = false;
            let mut candidates: Vec<(&ChangeHash, &PendingChange)> = pending
                .changes
                .iter()
                .filter(|(h, _)| allowed.contains(*h) && !ready_set.contains(*h))
                .collect();
            candidates.sort_by_key(|(_, pc)| pc.change.seq());
            let mut malformed_now = Vec::new();
            for (hash, pc) in candidates {
                let deps_ok = pc
                    .change
                    .deps()
                    .iter()
                    .all(|d| ready_set.contains(d) || am.get_change_meta_by_hash(d).is_some());
                if !deps_ok {
                    continue;
                }
                let current = next_seq
                    .get(&pc.actor)
                    .copied()
                    .unwrap_or_else(|| seqs.get(&pc.actor).copied().unwrap_or(0));
                if pc.change.seq() == current + 1 {
                    next_seq.insert(pc.actor.clone(), current + 1);
                    ready.push(*hash);
                    ready_set.insert(*hash);
                    progressed = true;
                } else {
                    malformed_now.push(*hash);
                }
            }
            for hash in malformed_now {
                if let Some(pc) = pending.changes.remove(&hash) {
                    self.pending_bytes -= pc.size;
                    *rejected
                        .entry((pc.from, RejectReason::Malformed))
                        .or_default() += 1;
                }
            }
            if !progressed {
                break;
            }
        }

        let mut applied_raw = Vec::new();
        let mut sources: BTreeMap<PeerId, (usize, u64)> = BTreeMap::new();
        let mut sent_by: BTreeMap<PeerId, BTreeSet<ChangeHash>> = BTreeMap::new();
        let mut authors = BTreeSet::new();
        let mut relayed = Vec::new();
        if !ready.is_empty() {
            let batch: Vec<PendingChange> = ready
                .iter()
                .filter_map(|h| pending.changes.remove(h))
                .collect();
            for pc in &batch {
                self.pending_bytes -= pc.size;
            }
            let changes: Vec<Change> = batch.iter().map(|pc| pc.change.clone()).collect();
            // Crafted changes can make `apply_changes` panic halfway,
            // leaving a document that no longer saves or loads (found by
            // fuzzing). Every apply starts from a copy it can go back to.
            let outcome: Vec<bool> = if apply_or_restore(am, &changes) {
                vec![true; batch.len()]
            } else {
                // Isolate the change Automerge refuses; keep the others.
                changes
                    .into_iter()
                    .map(|c| apply_or_restore(am, std::slice::from_ref(&c)))
                    .collect()
            };
            for (pc, ok) in batch.into_iter().zip(outcome) {
                if ok {
                    if let Some(author) = &pc.verified {
                        authors.insert(*author);
                    }
                    relayed.push(pc.change.hash());
                    let e = seqs.entry(pc.actor.clone()).or_default();
                    *e = (*e).max(pc.change.seq());
                    let source = sources.entry(pc.from).or_insert((0, u64::MAX));
                    source.0 += 1;
                    source.1 = source.1.min(pc.sent_ms);
                    sent_by.entry(pc.from).or_default().insert(pc.change.hash());
                    applied_raw.push(pc.raw);
                } else {
                    *rejected
                        .entry((pc.from, RejectReason::Malformed))
                        .or_default() += 1;
                }
            }
        }
        // Signatures whose head is now applied get persisted with it.
        let signatures: Vec<SignedHead> = ready
            .iter()
            .filter_map(|h| pending.covering.remove(h))
            .collect();
        for ((peer, reason), count) in rejected {
            self.event(Event::Rejected {
                peer,
                workspace: ws,
                reason,
                count,
            });
        }
        if applied_raw.is_empty() {
            return false;
        }
        self.remember_signatures(doc, &signatures);
        self.outputs.push_back(Output::Persist {
            workspace: ws,
            doc,
            changes: applied_raw,
            signatures,
        });
        for (peer, hashes) in sent_by {
            self.advance_shared(host, peer, ws, doc, &hashes);
        }
        for author in &authors {
            self.heard_from(author);
        }
        if self.relayed.len() + relayed.len() > super::MAX_RELAYED {
            self.relayed.clear();
        }
        for hash in relayed {
            self.relayed.insert((doc, hash), self.now_ms);
        }
        let mut first_source = None;
        for (peer, (count, sent_ms)) in sources {
            first_source.get_or_insert(peer);
            self.event(Event::Applied {
                peer,
                workspace: ws,
                doc,
                changes: count,
                sent_ms,
            });
        }
        self.changed(host, &ws, &doc, first_source);
        true
    }

    /// What Automerge's own `receive_sync_message` does after applying a
    /// message's changes (`advance_heads`), which applying them outside it
    /// skips: the heads `peer` sent us (it has them, and now so do we) join
    /// the heads shared with it, and shared heads no longer heads leave.
    /// Without it, a node that only received a document never counted it
    /// shared, so every restart synced every such document afresh (a
    /// message each, and a bloom filter of its whole history).
    fn advance_shared(
        &mut self,
        host: &mut impl Host,
        peer: PeerId,
        ws: WorkspaceId,
        doc: DocId,
        sent: &BTreeSet<ChangeHash>,
    ) {
        let Some(heads) = host.heads(&ws, &doc) else {
            return;
        };
        let Some(ds) = self
            .sessions
            .get_mut(&(peer, ws))
            .and_then(|s| s.docs.get_mut(&doc))
        else {
            return;
        };
        let mut shared: Vec<ChangeHash> = heads
            .into_iter()
            .filter(|h| sent.contains(h) || ds.state.shared_heads.contains(h))
            .collect();
        shared.sort_unstable();
        shared.dedup();
        ds.state.shared_heads = shared;
    }

    /// Drops pending changes that waited longer than the limit.
    pub(super) fn expire(&mut self, host: &mut impl Host, now_ms: u64) {
        let ttl = self.limits.pending_ttl_ms;
        let mut expired: BTreeMap<(PeerId, WorkspaceId), usize> = BTreeMap::new();
        let mut dropped: BTreeSet<(PeerId, WorkspaceId, DocId)> = BTreeSet::new();
        for ((ws, doc), pending) in &mut self.pending {
            pending.changes.retain(|_, pc| {
                let keep = now_ms.saturating_sub(pc.since_ms) < ttl;
                if !keep {
                    self.pending_bytes -= pc.size;
                    *expired.entry((pc.from, *ws)).or_default() += 1;
                    dropped.insert((pc.from, *ws, *doc));
                }
                keep
            });
        }
        for (peer, ws, doc) in dropped {
            self.sent_again(host, peer, ws, doc, true);
        }
        for p in self.pending.values_mut() {
            let changes = &p.changes;
            p.covering.retain(|h, _| changes.contains_key(h));
        }
        self.pending
            .retain(|_, p| !p.changes.is_empty() || !p.signatures.is_empty());
        for ((peer, workspace), count) in expired {
            self.event(Event::Rejected {
                peer,
                workspace,
                reason: RejectReason::Expired,
                count,
            });
        }
    }

    /// A change `peer` sent for `doc` was dropped here (the pending buffer
    /// was full, or it waited too long): the peer holds it in Automerge's
    /// `sent_hashes` and would never offer it again, so this document
    /// could stop syncing with it. Our next message asks it to forget what
    /// it sent (Automerge's sync reset) and offer again whatever we lack;
    /// with `now`, that message is sent at once.
    fn sent_again(
        &mut self,
        host: &mut impl Host,
        peer: PeerId,
        ws: WorkspaceId,
        doc: DocId,
        now: bool,
    ) {
        let Some(session) = self.sessions.get_mut(&(peer, ws)) else {
            return;
        };
        let ds = session.doc(host, &peer, doc);
        ds.state.needs_reset = true;
        if now {
            ds.state.in_flight = false;
            ds.idle = None;
            self.generate(host, peer, ws, doc);
        }
    }
}

/// Each actor's last sequence number in `am`.
fn last_seqs(am: &mut automerge::AutoCommit) -> BTreeMap<ActorId, u64> {
    let mut m: BTreeMap<ActorId, u64> = BTreeMap::new();
    for meta in am.get_changes_meta(&[]) {
        let e = m.entry(meta.actor.into_owned()).or_default();
        *e = (*e).max(meta.seq);
    }
    m
}

/// The changes a signature on `head` by `actor` covers: walking
/// dependencies back from the head through `graph` (a change's actor and
/// dependencies, for the changes being checked; the walk stops at any
/// other), every change of `actor` reached. One signature per author thus
/// vouches for the author's earlier changes before it.
fn covered<'a>(
    head: ChangeHash,
    actor: &ActorId,
    graph: impl Fn(&ChangeHash) -> Option<(&'a ActorId, &'a [ChangeHash])>,
) -> Vec<ChangeHash> {
    let mut out = Vec::new();
    let mut stack = vec![head];
    let mut seen = BTreeSet::new();
    while let Some(h) = stack.pop() {
        if !seen.insert(h) {
            continue;
        }
        if let Some((by, deps)) = graph(&h) {
            if by == actor {
                out.push(h);
            }
            stack.extend(deps.iter().copied());
        }
    }
    out
}

/// Applies `changes`, or leaves `am` exactly as it was: an error or a panic
/// inside Automerge restores the copy taken before. Applied changes must
/// also come back out of the document unchanged: some crafted changes apply
/// cleanly but leave operations Automerge cannot turn into changes again,
/// and such a document could neither be synced to anyone nor saved (found
/// by fuzzing).
fn apply_or_restore(am: &mut automerge::AutoCommit, changes: &[Change]) -> bool {
    let before = am.clone();
    let applied = matches!(
        guarded(|| crate::apply::apply_changes(am, changes.iter().cloned())),
        Some(Ok(()))
    ) && changes.iter().all(|c| {
        let hash = c.hash();
        guarded(|| am.get_change_by_hash(&hash).map(|back| back.hash()))
            .is_some_and(|back| back == Some(hash))
    });
    if !applied {
        *am = before;
    }
    applied
}

/// Whether a change is exactly what Automerge itself would encode for its
/// operations. Expanding the operations resolves every actor reference (a
/// change naming an actor it does not list panics here, under the guard,
/// not inside `apply_changes`), and encoding them again must give the same
/// hash: a non-canonical change applies cleanly but the document then saves
/// into bytes that no longer load ("mismatching heads"), which would lose
/// the document at the next restart. Both found by fuzzing; the inputs are
/// in `fuzz/regressions/automerge_changes/`.
pub(super) fn canonical(change: &Change) -> bool {
    guarded(|| Change::from(change.decode()).hash() == change.hash()).unwrap_or(false)
}
