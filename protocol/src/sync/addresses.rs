//! Address cards in sessions: members keep each other's latest signed
//! addresses (`card.rs`), so a member that moved is found again.
//!
//! - A session that opens hears this node's own card and the latest card it
//!   holds of every other member of the session's workspace.
//! - A card heard in an admitted session is kept when it verifies, is about
//!   a member of that workspace, and is newer than the one held; then it is
//!   passed on to the other members with a session that share a workspace
//!   with the card's peer. An older or equal card stops there, so cards
//!   never circle.
//! - A card is told only to members of a workspace its peer is a member of:
//!   nobody outside the team learns where a member is.
//! - A card whose signature does not verify is a protocol violation by the
//!   peer that sent it (a member only passes on cards it verified).

use std::collections::BTreeSet;

use libp2p_identity::PeerId;

use super::{Engine, Event, Host};
use crate::card::{AddressCard, CardError};
use crate::ids::WorkspaceId;
use crate::wire::{Frame, MAX_FRAME_CARDS};

/// Peers whose cards are kept at most (the oldest card goes first).
const MAX_CARDS: usize = 4096;

impl Engine {
    /// This node's own card, newly signed: every member with a session
    /// hears it.
    pub(super) fn own_card(&mut self, card: AddressCard) {
        if self
            .own_card
            .as_ref()
            .is_some_and(|c| c.at_ms >= card.at_ms)
        {
            return;
        }
        self.tell_card(&card, BTreeSet::new(), |_| true);
        self.own_card = Some(card);
    }

    /// Cards kept from before (the host's store): held, not passed on.
    pub(super) fn known_cards(&mut self, cards: Vec<AddressCard>, now_ms: u64) {
        for card in cards {
            if let Ok(peer) = card.verify(now_ms) {
                self.keep_card(peer, card);
            }
        }
    }

    /// A session just opened: the peer hears this node's card and the
    /// latest ones of the workspace's other members.
    pub(super) fn greet_with_cards(&mut self, host: &impl Host, peer: PeerId, ws: WorkspaceId) {
        let mut cards: Vec<AddressCard> = self.own_card.iter().cloned().collect();
        let own_key = self.own_card.as_ref().map(|c| c.key);
        for (member, card) in &self.cards {
            if *member != peer
                && Some(card.key) != own_key
                && host.workspaces_for(member).contains(&ws)
            {
                cards.push(card.clone());
            }
        }
        for part in cards.chunks(MAX_FRAME_CARDS) {
            self.send(
                peer,
                Frame::Addresses {
                    workspace: ws,
                    cards: part.to_vec(),
                },
            );
        }
    }

    /// A peer passes on cards in its session for `ws`.
    pub(super) fn peer_cards(
        &mut self,
        host: &impl Host,
        from: PeerId,
        ws: WorkspaceId,
        cards: Vec<AddressCard>,
        now_ms: u64,
    ) {
        let admitted = self
            .sessions
            .get(&(from, ws))
            .is_some_and(|s| s.admitted.is_some());
        if !admitted || cards.len() > MAX_FRAME_CARDS {
            self.strike(from, "address cards outside an admitted session");
            return;
        }
        let own_key = self.own_card.as_ref().map(|c| c.key);
        for card in cards {
            let peer = match card.verify(now_ms) {
                Ok(peer) => peer,
                // The card's author's clock runs ahead; the card is genuine.
                Err(CardError::FromTheFuture) => continue,
                Err(e) => {
                    self.strike(from, &format!("a forged address card: {e}"));
                    return;
                }
            };
            if Some(card.key) == own_key
                || !host.workspaces_for(&peer).contains(&ws)
                || self.cards.get(&peer).is_some_and(|c| c.at_ms >= card.at_ms)
            {
                continue;
            }
            self.pass_on(host, from, peer, &card);
            self.keep_card(peer, card.clone());
            self.event(Event::AddressCard { peer, card });
        }
    }

    /// Tells a newer card of `peer` to every other member with a session
    /// that shares a workspace with `peer`, once each.
    fn pass_on(&mut self, host: &impl Host, from: PeerId, peer: PeerId, card: &AddressCard) {
        let theirs = host.workspaces_for(&peer);
        self.tell_card(card, BTreeSet::from([from, peer]), |w| theirs.contains(w));
    }

    /// Sends `card` once to every peer not in `told` with an admitted
    /// session in a workspace `within` accepts.
    fn tell_card(
        &mut self,
        card: &AddressCard,
        mut told: BTreeSet<PeerId>,
        within: impl Fn(&WorkspaceId) -> bool,
    ) {
        let sessions: Vec<(PeerId, WorkspaceId)> = self
            .sessions
            .iter()
            .filter(|((_, w), s)| s.admitted.is_some() && within(w))
            .map(|(k, _)| *k)
            .collect();
        for (to, ws) in sessions {
            if told.insert(to) {
                self.send(
                    to,
                    Frame::Addresses {
                        workspace: ws,
                        cards: vec![card.clone()],
                    },
                );
            }
        }
    }

    fn keep_card(&mut self, peer: PeerId, card: AddressCard) {
        if self.cards.get(&peer).is_some_and(|c| c.at_ms >= card.at_ms) {
            return;
        }
        self.cards.insert(peer, card);
        if self.cards.len() > MAX_CARDS {
            let oldest = self
                .cards
                .iter()
                .min_by_key(|(_, c)| c.at_ms)
                .map(|(p, _)| *p);
            if let Some(p) = oldest {
                self.cards.remove(&p);
            }
        }
    }

    /// The latest card held of `peer`, if any.
    pub fn address_card(&self, peer: &PeerId) -> Option<&AddressCard> {
        self.cards.get(peer)
    }

    /// Every member's latest card held.
    pub fn address_cards(&self) -> impl Iterator<Item = (&PeerId, &AddressCard)> {
        self.cards.iter()
    }
}
