//! Address cards: where a member can be reached, signed by the member.
//!
//! A node signs, with its own key (the one its peer id is made from), the
//! addresses teammates can dial it at — direct ones and circuit addresses
//! through relays — with the time it signed them. Members pass each other's
//! latest cards along in their workspace sessions and keep them, so a member
//! that moved (new network, new relay) is found again by teammates that
//! never heard from it directly, and after a restart.
//!
//! Nobody can forge or alter a card: it names no peer id, only a public key
//! whose peer id it is, and the signature covers the key, the time and every
//! address. A newer card replaces an older one; a relay can withhold a card,
//! never roll one back past one already held.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use crate::envelope::SignatureError;
use crate::ids::peer_id_of;

const DOMAIN: &[u8] = b"xencode address card v1\0";

/// Addresses on one card at most.
pub const MAX_CARD_ADDRS: usize = 16;
/// Bytes of one address (its text form) at most.
pub const MAX_CARD_ADDR_BYTES: usize = 256;
/// How far ahead of the receiver's clock a card's time may be (ms).
pub const MAX_CARD_CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;

/// A member's addresses, signed with the time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressCard {
    /// The member's ed25519 public key (its peer id is made from it).
    pub key: [u8; 32],
    /// Multiaddrs in text form, each ending in `/p2p/<the member>`.
    pub addrs: Vec<String>,
    /// When the member signed the card (its clock, Unix ms).
    pub at_ms: u64,
    /// 64-byte ed25519 signature (a `Vec` for serde; its length is checked).
    pub signature: Vec<u8>,
}

/// Why a card was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CardError {
    #[error("the card's signature: {0}")]
    Signature(#[from] SignatureError),
    #[error(
        "the card has more than {MAX_CARD_ADDRS} addresses or one over {MAX_CARD_ADDR_BYTES} bytes"
    )]
    TooLarge,
    #[error("the card is dated more than ten minutes in the future")]
    FromTheFuture,
}

fn payload(key: &[u8; 32], addrs: &[String], at_ms: u64) -> Vec<u8> {
    let mut p =
        Vec::with_capacity(DOMAIN.len() + 40 + addrs.iter().map(|a| a.len() + 4).sum::<usize>());
    p.extend_from_slice(DOMAIN);
    p.extend_from_slice(key);
    p.extend_from_slice(&at_ms.to_le_bytes());
    for a in addrs {
        // Length-prefixed: no two address lists sign the same bytes.
        p.extend_from_slice(&(a.len() as u32).to_le_bytes());
        p.extend_from_slice(a.as_bytes());
    }
    p
}

impl AddressCard {
    /// Signs `addrs` (at most [`MAX_CARD_ADDRS`], longer ones dropped) at
    /// `at_ms` with `key`.
    pub fn sign(key: &SigningKey, mut addrs: Vec<String>, at_ms: u64) -> Self {
        addrs.retain(|a| a.len() <= MAX_CARD_ADDR_BYTES);
        addrs.truncate(MAX_CARD_ADDRS);
        let public = key.verifying_key().to_bytes();
        let signature = key
            .sign(&payload(&public, &addrs, at_ms))
            .to_bytes()
            .to_vec();
        Self {
            key: public,
            addrs,
            at_ms,
            signature,
        }
    }

    /// The peer id of the card's key (`None` if it is not an ed25519 key).
    pub fn peer(&self) -> Option<PeerId> {
        peer_id_of(&self.key).ok()
    }

    /// Checks the card's bounds, time (against `now_ms`) and signature;
    /// the peer it is about.
    pub fn verify(&self, now_ms: u64) -> Result<PeerId, CardError> {
        if self.addrs.len() > MAX_CARD_ADDRS
            || self.addrs.iter().any(|a| a.len() > MAX_CARD_ADDR_BYTES)
        {
            return Err(CardError::TooLarge);
        }
        if self.at_ms > now_ms.saturating_add(MAX_CARD_CLOCK_SKEW_MS) {
            return Err(CardError::FromTheFuture);
        }
        let key = VerifyingKey::from_bytes(&self.key).map_err(|_| SignatureError::BadKey)?;
        let bytes: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| SignatureError::BadLength)?;
        key.verify_strict(
            &payload(&self.key, &self.addrs, self.at_ms),
            &Signature::from_bytes(&bytes),
        )
        .map_err(|_| SignatureError::Invalid)?;
        self.peer()
            .ok_or(CardError::Signature(SignatureError::BadKey))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    #[test]
    fn a_card_verifies_as_its_keys_peer_and_nothing_in_it_can_change() {
        let addrs = vec![
            "/ip4/10.0.0.2/tcp/7000".to_owned(),
            "/ip4/1.2.3.4/tcp/7000/p2p/x/p2p-circuit".to_owned(),
        ];
        let card = AddressCard::sign(&key(1), addrs.clone(), 1_000);
        let peer = peer_id_of(&key(1).verifying_key().to_bytes()).expect("peer");
        assert_eq!(card.verify(2_000), Ok(peer));

        let mut moved = card.clone();
        moved.addrs[0] = "/ip4/6.6.6.6/tcp/7000".into();
        assert_eq!(moved.verify(2_000), Err(SignatureError::Invalid.into()));
        let mut newer = card.clone();
        newer.at_ms += 1;
        assert_eq!(newer.verify(2_000), Err(SignatureError::Invalid.into()));
        let mut joined = card.clone();
        joined.addrs = vec![format!("{}{}", addrs[0], addrs[1])];
        assert_eq!(joined.verify(2_000), Err(SignatureError::Invalid.into()));
        let mut other = card.clone();
        other.key = key(2).verifying_key().to_bytes();
        assert_eq!(other.verify(2_000), Err(SignatureError::Invalid.into()));
        let mut short = card.clone();
        short.signature.pop();
        assert_eq!(short.verify(2_000), Err(SignatureError::BadLength.into()));
        let mut long = card.clone();
        long.addrs = vec!["/ip4/1.1.1.1".into(); MAX_CARD_ADDRS + 1];
        assert_eq!(long.verify(2_000), Err(CardError::TooLarge));

        let ahead = AddressCard::sign(&key(1), addrs, 1_000 + MAX_CARD_CLOCK_SKEW_MS + 1);
        assert_eq!(ahead.verify(1_000), Err(CardError::FromTheFuture));
        assert!(ahead.verify(2_000).is_ok());
    }
}
