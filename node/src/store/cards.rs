//! Members' address cards on this node: its own, signed when its addresses
//! change, and teammates' latest, kept in `address-cards-1` so a member that
//! moved is dialled where it is now, after a restart too (the engine passes
//! cards on in sessions: `protocol/src/sync/addresses.rs`).

use redb::{ReadableDatabase, ReadableTable};
use xencode_protocol::PeerId;
use xencode_protocol::card::AddressCard;
use xencode_protocol::sync::Input;

use super::NetCommand;
use super::actor::Actor;
use super::persist::classify;
use super::tables::ADDRESS_CARDS;

impl Actor {
    /// Hands the engine the cards kept from before.
    pub(super) fn load_cards(&mut self) {
        let read = || -> Result<Vec<AddressCard>, redb::Error> {
            let Ok(db) = self.disk.db() else {
                return Ok(Vec::new());
            };
            let tx = db.begin_read()?;
            let table = match tx.open_table(ADDRESS_CARDS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let mut cards = Vec::new();
            for entry in table.iter()? {
                let (_, value) = entry?;
                // A card that does not decode is dropped, not fatal: the
                // member's next card replaces it.
                if let Ok(card) = postcard::from_bytes::<AddressCard>(value.value()) {
                    cards.push(card);
                }
            }
            Ok(cards)
        };
        match read() {
            Ok(cards) if !cards.is_empty() => {
                tracing::debug!(cards = cards.len(), "members' address cards loaded");
                self.run_engine(Input::KnownAddresses { cards });
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "members' address cards could not be read"),
        }
    }

    /// This node can be reached at `addrs` now: members hear a new card.
    pub(super) fn sign_own_card(&mut self, addrs: Vec<String>) {
        let card = AddressCard::sign(&self.signing, addrs, crate::now_ms());
        tracing::debug!(addrs = card.addrs.len(), "signed a new address card");
        self.run_engine(Input::OwnAddresses { card });
    }

    /// A member's newer card: kept, and its addresses tried first.
    pub(super) fn heard_card(&mut self, peer: PeerId, card: AddressCard) {
        tracing::info!(%peer, addrs = ?card.addrs, "a member's new addresses");
        let written = self.disk.db().and_then(|db| {
            let bytes = postcard::to_stdvec(&card)
                .map_err(|e| classify(redb::Error::Corrupted(format!("address card: {e}"))))?;
            let tx = db.begin_write().map_err(classify)?;
            {
                let mut table = tx.open_table(ADDRESS_CARDS).map_err(classify)?;
                table
                    .insert(peer.to_string().as_str(), bytes.as_slice())
                    .map_err(classify)?;
            }
            tx.commit().map_err(classify)
        });
        if let Err(e) = written {
            // Held in memory still; only a restart would forget it.
            tracing::warn!(%peer, error = %e, "a member's address card was not stored");
        }
        self.send_net(NetCommand::Moved {
            peer,
            addrs: card.addrs,
        });
    }

    /// The addresses of the members whose cards are held, for the network's
    /// redials at start.
    pub(super) fn card_contacts(&self) -> Vec<(String, Vec<String>)> {
        self.sync
            .engine
            .address_cards()
            .map(|(peer, card)| (peer.to_string(), card.addrs.clone()))
            .collect()
    }
}
