//! Generating sync messages and the frames that carry them.

use std::collections::{BTreeMap, BTreeSet};

use automerge::sync::{Capability, ChunkList, SyncDoc};
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
        let new: Vec<ChangeHash> = ds.state.sent_hashes.difference(&before).copied().collect();
        let message = msg.encode();
        if new.is_empty() {
            if ds.idle.as_ref() == Some(&message) {
                return;
            }
            ds.idle = Some(message.clone());
        } else {
            ds.idle = None;
        }
        let changes = causal_order(
            new.iter()
                .filter_map(|h| am.get_change_by_hash(h))
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
                recent
                    .get(&(doc, *h))
                    .cloned()
                    .or_else(|| host.signature(&ws, &doc, h))
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
