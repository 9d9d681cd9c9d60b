//! Generating sync messages and the frames that carry them.

use std::collections::{BTreeMap, BTreeSet};

use automerge::sync::{Capability, ChunkList, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{Change, ChangeHash};
use libp2p_identity::PeerId;

use super::{Engine, Host, guarded};
use crate::envelope::SignedHead;
use crate::ids::{DocId, WorkspaceId};
use crate::wire::{Frame, TARGET_CHANGES_BYTES};

impl Engine {
    /// Generates the next sync message for (peer, doc), if Automerge has one,
    /// and sends it with the changes it offers, split into frames.
    pub(super) fn generate(
        &mut self,
        host: &mut impl Host,
        peer: PeerId,
        ws: WorkspaceId,
        doc: DocId,
    ) {
        let Some(session) = self.sessions.get_mut(&(peer, ws)) else {
            return;
        };
        if !session.admitted.is_some_and(|a| a.read) {
            return;
        }
        let admitted_ms = session.admitted_ms;
        let ds = session.doc(host, &peer, doc);
        let Some(am) = host.document(&ws, &doc) else {
            return;
        };
        // We send raw changes ourselves (`msg.changes` is emptied below), so
        // Automerge's version-2 shortcut (the whole document once a third of
        // its changes are missing) would only make us resend history the
        // peer has: a one-line edit to a file of two changes resent both.
        if let Some(caps) = ds.state.their_capabilities.as_mut() {
            caps.retain(|c| *c != Capability::MessageV2);
        }
        let before = ds.state.sent_hashes.clone();
        let born = born_after(&ds.state, am, admitted_ms);
        // What the peer told us last is in the state: a crafted sync message
        // (fuzzing found a bloom filter of zero bits, a division by zero in
        // Automerge) makes generating the answer panic. Start the document
        // afresh and count it against the peer.
        let Some(generated) = guarded(|| am.sync().generate_sync_message(&mut ds.state)) else {
            ds.state = automerge::sync::State::new();
            ds.idle = None;
            self.strike(peer, "sync state Automerge cannot answer");
            return;
        };
        let Some(mut msg) = generated else {
            return;
        };
        msg.changes = ChunkList::empty();
        ask_for_what_pending_lacks(self.pending.get(&(ws, doc)), am, &mut msg.need);
        if let Some(h) = born {
            ds.state.sent_hashes.insert(h);
        }
        let mut new: Vec<ChangeHash> = ds.state.sent_hashes.difference(&before).copied().collect();
        // Lazy relaying: changes that just came from another peer are held
        // back from a peer that has not asked for anything; it hears our
        // heads and asks (its need), unless a neighbour brought them first.
        // Whatever it still lacks goes in full at the follow-up.
        let asked_nothing = ds.state.their_need.as_ref().is_none_or(|n| n.is_empty());
        if !self.eager && asked_nothing {
            let now = self.now_ms;
            let held: BTreeSet<ChangeHash> = new
                .iter()
                .filter(|h| {
                    self.relayed
                        .get(&(doc, **h))
                        .is_some_and(|t| now.saturating_sub(*t) < super::RELAY_LAZY_MS)
                })
                .copied()
                .collect();
            if !held.is_empty() {
                for h in &held {
                    ds.state.sent_hashes.remove(h);
                }
                new.retain(|h| !held.contains(h));
                self.follow_ups
                    .entry((peer, ws, doc))
                    .or_insert(now + super::RELAY_LAZY_MS);
            }
        }
        // A head already asked of another peer a moment ago is not asked
        // again: the first answer brings it (and the follow-ups, if not).
        let now = self.now_ms;
        msg.need.retain(|h| match self.asked.get(&(doc, *h)) {
            Some((other, t)) if *other != peer => now.saturating_sub(*t) >= super::RELAY_LAZY_MS,
            _ => true,
        });
        if self.asked.len() + msg.need.len() > super::MAX_RELAYED {
            self.asked.clear();
        }
        for h in &msg.need {
            let entry = self.asked.entry((doc, *h)).or_insert((peer, now));
            if now.saturating_sub(entry.1) >= super::RELAY_LAZY_MS {
                *entry = (peer, now);
            }
        }
        let message = msg.encode();
        if new.is_empty() {
            if ds.idle.as_ref() == Some(&message) {
                return;
            }
            ds.idle = Some(message.clone());
        } else {
            ds.idle = None;
        }
        if let Some((chunk, signatures)) = self.as_chunk(host, ws, doc, new.len()) {
            self.send(
                peer,
                Frame::Chunk {
                    workspace: ws,
                    doc,
                    message: Some(message),
                    chunk,
                    signatures,
                    sent_ms: self.now_ms,
                },
            );
            return;
        }
        let Some(am) = host.document(&ws, &doc) else {
            return;
        };
        let recent = &self.recent_local;
        let changes = causal_order(
            new.iter()
                .filter_map(|h| {
                    recent
                        .get(&(doc, *h))
                        .cloned()
                        .or_else(|| am.get_change_by_hash(h))
                })
                .collect(),
        );
        let mut frames: Vec<Vec<Change>> = Vec::new();
        let mut size = 0;
        for c in changes {
            let len = c.raw_bytes().len();
            if frames.is_empty() || (size + len > TARGET_CHANGES_BYTES && size > 0) {
                frames.push(Vec::new());
                size = 0;
            }
            size += len;
            if let Some(f) = frames.last_mut() {
                f.push(c);
            }
        }
        if frames.is_empty() {
            frames.push(Vec::new());
        }
        let last = frames.len() - 1;
        for (i, frame) in frames.into_iter().enumerate() {
            let recent = &self.recent_signatures;
            let signatures = covering_signatures(&ws, &doc, &frame, |h| {
                known_signature(recent, host, &ws, &doc, h)
            });
            self.send(
                peer,
                Frame::Sync {
                    workspace: ws,
                    doc,
                    message: (i == last).then(|| message.clone()),
                    changes: frame.iter().map(|c| c.raw_bytes().to_vec()).collect(),
                    signatures,
                    sent_ms: self.now_ms,
                },
            );
        }
    }

    /// The whole document as one chunk, with a signature for each author's
    /// newest change, when the `sending` changes Automerge chose are most of
    /// it: at least [`CHUNK_MIN_CHANGES`] and more than a third of its
    /// changes (Automerge's own rule for sending the whole document). A
    /// document chunk stores the changes' metadata in columns and no
    /// hashes, a few bytes per small change where a raw change carries its
    /// 32-byte dependency hash and its actor. `None`: send changes (too
    /// few, too large for a frame, uncommitted operations, or an author's
    /// newest change without a signature here).
    fn as_chunk(
        &mut self,
        host: &mut impl Host,
        ws: WorkspaceId,
        doc: DocId,
        sending: usize,
    ) -> Option<(Vec<u8>, Vec<SignedHead>)> {
        if sending < CHUNK_MIN_CHANGES {
            return None;
        }
        let am = host.document(&ws, &doc)?;
        if am.pending_ops() > 0 {
            return None;
        }
        let mut newest: BTreeMap<Vec<u8>, (u64, ChangeHash)> = BTreeMap::new();
        let mut total = 0usize;
        for meta in guarded(|| am.get_changes_meta(&[]))? {
            total += 1;
            let e = newest
                .entry(meta.actor.to_bytes().to_vec())
                .or_insert((0, meta.hash));
            if meta.seq >= e.0 {
                *e = (meta.seq, meta.hash);
            }
        }
        if sending.saturating_mul(3) <= total || newest.len() > MAX_CHUNK_SIGNATURES {
            return None;
        }
        let saved = guarded(|| am.save())?;
        if saved.len() > MAX_CHUNK_BYTES
            || crate::chunks::inflated_len(&saved, self.limits.max_pending_bytes).is_err()
        {
            return None;
        }
        let recent = &self.recent_signatures;
        let signatures = newest
            .values()
            .map(|(_, h)| known_signature(recent, host, &ws, &doc, h))
            .collect::<Option<Vec<_>>>()?;
        Some((saved, signatures))
    }
}

/// The author signature of a change, from those just received (not yet
/// persisted) or the host's store.
fn known_signature(
    recent: &BTreeMap<(DocId, ChangeHash), SignedHead>,
    host: &impl Host,
    ws: &WorkspaceId,
    doc: &DocId,
    hash: &ChangeHash,
) -> Option<SignedHead> {
    recent
        .get(&(*doc, *hash))
        .cloned()
        .or_else(|| host.signature(ws, doc, hash))
}

/// Fewest changes sent as a document chunk rather than one by one.
pub(super) const CHUNK_MIN_CHANGES: usize = 64;
/// Largest document chunk sent (a frame holds 8 MiB); a larger document
/// goes as changes, in frames of [`TARGET_CHANGES_BYTES`].
const MAX_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Most authors' signatures with one chunk.
pub(super) const MAX_CHUNK_SIGNATURES: usize = 4096;

/// The change of a document born after the session was admitted, to send
/// with the first message. Automerge's first message for a document only
/// names heads (it does not know what the peer has), so a new document
/// would cost a round trip (the peer's "I need these") before its change
/// travels. A document whose whole history is one change, made after the
/// session began (change times are whole seconds: made in the second the
/// session began or later), and never synced with this peer, the peer can
/// only have had from a third member in the moments since: its change goes
/// with the first message. Wrong at worst by that one change's bytes, which
/// the peer drops as already known.
fn born_after(
    state: &automerge::sync::State,
    am: &mut automerge::AutoCommit,
    admitted_ms: u64,
) -> Option<ChangeHash> {
    if state.their_heads.is_some()
        || !state.shared_heads.is_empty()
        || !state.sent_hashes.is_empty()
    {
        return None;
    }
    let [head] = am.get_heads()[..] else {
        return None;
    };
    let meta = am.get_change_meta_by_hash(&head)?;
    let since = i64::try_from(admitted_ms / 1000).unwrap_or(i64::MAX);
    (meta.deps.is_empty() && meta.timestamp >= since).then_some(head)
}

/// Dependencies asked for in one message.
const MAX_ASKED: usize = 256;

/// Completes a sync message's `need` with what our pending buffer waits
/// for. Automerge computes `need` from the changes queued inside the
/// document, but ours wait outside it, in the pending buffer, until they are
/// checked: a change there whose dependency never came (the sender's bloom
/// filter test said we had it: a false positive, about 1 in 100) would wait
/// for good, and the document stop syncing, since nothing else would ever
/// ask for the dependency. So the missing dependencies of pending changes
/// are asked for by hash; changes already pending and covered by a
/// signature are not asked for again. (A change the buffer itself drops is
/// asked for again another way: see `Engine::sent_again`.)
fn ask_for_what_pending_lacks(
    pending: Option<&super::Pending>,
    am: &mut automerge::AutoCommit,
    need: &mut Vec<ChangeHash>,
) {
    let Some(pending) = pending else {
        return;
    };
    need.retain(|h| {
        pending
            .changes
            .get(h)
            .is_none_or(|pc| pc.verified.is_none())
    });
    let mut asked: BTreeSet<ChangeHash> = need.iter().copied().collect();
    for pc in pending.changes.values() {
        for dep in pc.change.deps() {
            if asked.len() >= MAX_ASKED {
                break;
            }
            if !pending.changes.contains_key(dep)
                && am.get_change_meta_by_hash(dep).is_none()
                && asked.insert(*dep)
            {
                need.push(*dep);
            }
        }
    }
    // Automerge encodes hashes in order (and asserts it).
    need.sort_unstable();
}

/// For each actor in `frame`, the signature of its newest change there that
/// has one: one signature per author covers the author's changes before it.
fn covering_signatures(
    _ws: &WorkspaceId,
    _doc: &DocId,
    frame: &[Change],
    signature: impl Fn(&ChangeHash) -> Option<SignedHead>,
) -> Vec<SignedHead> {
    let mut by_actor: BTreeMap<Vec<u8>, Vec<&Change>> = BTreeMap::new();
    for c in frame {
        by_actor
            .entry(c.actor_id().to_bytes().to_vec())
            .or_default()
            .push(c);
    }
    by_actor
        .into_values()
        .filter_map(|mut changes| {
            changes.sort_by_key(|c| std::cmp::Reverse(c.seq()));
            changes.iter().find_map(|c| signature(&c.hash()))
        })
        .collect()
}

/// Orders changes so that every change comes after its dependencies within the set.
fn causal_order(changes: Vec<Change>) -> Vec<Change> {
    let index: BTreeMap<ChangeHash, usize> = changes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.hash(), i))
        .collect();
    let mut done: BTreeSet<usize> = BTreeSet::new();
    let mut order = Vec::with_capacity(changes.len());
    for start in 0..changes.len() {
        // Iterative post-order walk over dependencies inside the set.
        let mut stack = vec![(start, false)];
        while let Some((i, expanded)) = stack.pop() {
            if done.contains(&i) {
                continue;
            }
            if expanded {
                done.insert(i);
                order.push(i);
                continue;
            }
            stack.push((i, true));
            for dep in changes[i].deps() {
                if let Some(&j) = index.get(dep)
                    && !done.contains(&j)
                {
                    stack.push((j, false));
                }
            }
        }
    }
    let mut slots: Vec<Option<Change>> = changes.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use automerge::transaction::{CommitOptions, Transactable};
    use automerge::{AutoCommit, ROOT};

    use super::born_after;

    /// A document of one change made at `secs`.
    fn one_change(secs: i64) -> AutoCommit {
        let mut am = AutoCommit::new();
        am.put(ROOT, "k", 1).expect("put");
        am.commit_with(CommitOptions::default().with_time(secs));
        am
    }

    #[test]
    fn only_a_one_change_document_made_since_the_session_began_goes_unasked() {
        let fresh = automerge::sync::State::new();
        let admitted_ms = 1_700_000_000_500;
        // Made in the second the session began, or later: sent.
        let mut am = one_change(1_700_000_000);
        assert_eq!(
            born_after(&fresh, &mut am, admitted_ms),
            am.get_heads().first().copied()
        );
        // Made before: the peer may have it.
        assert_eq!(
            born_after(&fresh, &mut one_change(1_699_999_999), admitted_ms),
            None
        );
        // Two changes: not a document just born.
        let mut two = one_change(1_700_000_001);
        two.put(ROOT, "k", 2).expect("put");
        two.commit_with(CommitOptions::default().with_time(1_700_000_001));
        assert_eq!(born_after(&fresh, &mut two, admitted_ms), None);
        // Anything already known of the peer's copy decides instead.
        let mut am = one_change(1_700_000_001);
        let mut heard = automerge::sync::State::new();
        heard.their_heads = Some(Vec::new());
        assert_eq!(born_after(&heard, &mut am, admitted_ms), None);
        let mut shared = automerge::sync::State::new();
        shared.shared_heads = am.get_heads();
        assert_eq!(born_after(&shared, &mut am, admitted_ms), None);
        let mut sent = automerge::sync::State::new();
        sent.sent_hashes.extend(am.get_heads());
        assert_eq!(born_after(&sent, &mut am, admitted_ms), None);
    }
}
