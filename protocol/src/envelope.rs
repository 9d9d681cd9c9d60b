//! Signed heads: how the author of a change vouches for it.
//!
//! Every change a node makes is signed by its author over (workspace,
//! document, actor, change hash). A change hash covers its dependencies'
//! hashes, so one signature over an author's newest change vouches for all of
//! that author's earlier changes among its ancestors; a receiver verifies one
//! signature per author per frame and walks the hashes from the signed head
//! (never trusting sequence numbers) to mark which changes it covers.
//!
//! The signature binds the workspace and document ids, so it cannot be
//! replayed into another document, and the actor id, which must equal
//! `ids::actor_id(author, epoch)`, so a change cannot be attributed to an
//! author who did not make it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::ids::{DocId, WorkspaceId, actor_id};

const DOMAIN: &[u8] = b"xencode signed head v1\0";

/// An author's signature over one change hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedHead {
    /// The author's ed25519 public key.
    pub author: [u8; 32],
    /// The author's actor epoch: the change's actor is `actor_id(author, epoch)`.
    pub epoch: u64,
    /// The signed change hash.
    pub hash: [u8; 32],
    /// 64-byte ed25519 signature (a `Vec` for serde; its length is checked).
    pub signature: Vec<u8>,
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("the author key is not a valid ed25519 public key")]
    BadKey,
    #[error("the signature is not 64 bytes")]
    BadLength,
    #[error("the signature does not verify")]
    Invalid,
}

fn payload(ws: &WorkspaceId, doc: &DocId, actor: &[u8; 16], hash: &[u8; 32]) -> Vec<u8> {
    let mut p = Vec::with_capacity(DOMAIN.len() + 16 + 16 + 16 + 32);
    p.extend_from_slice(DOMAIN);
    p.extend_from_slice(ws.as_bytes());
    p.extend_from_slice(doc.as_bytes());
    p.extend_from_slice(actor);
    p.extend_from_slice(hash);
    p
}

impl SignedHead {
    /// Signs `hash`, a change of `doc` in `ws` made by `key` in `epoch`.
    pub fn sign(
        key: &SigningKey,
        epoch: u64,
        ws: &WorkspaceId,
        doc: &DocId,
        hash: [u8; 32],
    ) -> Self {
        let author = key.verifying_key().to_bytes();
        let actor = actor_id(&author, epoch);
        let signature = key
            .sign(&payload(ws, doc, &actor, &hash))
            .to_bytes()
            .to_vec();
        Self {
            author,
            epoch,
            hash,
            signature,
        }
    }

    /// The Automerge actor id of the signed change.
    pub fn actor(&self) -> [u8; 16] {
        actor_id(&self.author, self.epoch)
    }

    /// Verifies the signature for `doc` in `ws`.
    pub fn verify(&self, ws: &WorkspaceId, doc: &DocId) -> Result<(), SignatureError> {
        let key = VerifyingKey::from_bytes(&self.author).map_err(|_| SignatureError::BadKey)?;
        let bytes: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| SignatureError::BadLength)?;
        let sig = Signature::from_bytes(&bytes);
        key.verify_strict(&payload(ws, doc, &self.actor(), &self.hash), &sig)
            .map_err(|_| SignatureError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    #[test]
    fn a_signature_verifies_only_for_its_document_and_hash() {
        let ws = WorkspaceId::from_bytes([1; 16]);
        let doc = DocId::from_bytes([2; 16]);
        let s = SignedHead::sign(&key(7), 3, &ws, &doc, [9; 32]);
        assert_eq!(s.verify(&ws, &doc), Ok(()));
        assert_eq!(s.actor(), actor_id(&key(7).verifying_key().to_bytes(), 3));
        assert_eq!(
            s.verify(&ws, &DocId::from_bytes([3; 16])),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            s.verify(&WorkspaceId::from_bytes([0; 16]), &doc),
            Err(SignatureError::Invalid)
        );
        let mut other_hash = s.clone();
        other_hash.hash = [8; 32];
        assert_eq!(other_hash.verify(&ws, &doc), Err(SignatureError::Invalid));
        let mut other_epoch = s.clone();
        other_epoch.epoch = 4;
        assert_eq!(other_epoch.verify(&ws, &doc), Err(SignatureError::Invalid));
        let mut claimed_by_other = s.clone();
        claimed_by_other.author = key(8).verifying_key().to_bytes();
        assert_eq!(
            claimed_by_other.verify(&ws, &doc),
            Err(SignatureError::Invalid)
        );
        let mut short = s;
        short.signature.pop();
        assert_eq!(short.verify(&ws, &doc), Err(SignatureError::BadLength));
    }
}

/// Prefix of the commit message in which a change cites the access-document
/// heads its author saw when making it.
const CITATION_PREFIX: &str = "xa1:";
/// Most access heads a citation may name.
pub const MAX_CITED_HEADS: usize = 64;

/// The commit message citing `heads` of the access document.
///
/// Every change to a workspace's index and file documents carries one. The
/// message is part of the change, so its hash — and the author's signature
/// over a descendant — covers it: a relay cannot alter it, and every node
/// judges the change by the same membership state, the one at these heads.
pub fn encode_citation(heads: &[automerge::ChangeHash]) -> String {
    let mut heads = heads.to_vec();
    heads.sort();
    let encoded: Vec<String> = heads.iter().map(|h| URL_SAFE_NO_PAD.encode(h.0)).collect();
    format!("{CITATION_PREFIX}{}", encoded.join(","))
}

/// The access heads a change's message cites; `None` if it cites none or
/// the citation is malformed or too long. The citation is the message's
/// first line; lines after it are free text (an imported change names its
/// original author there).
pub fn decode_citation(message: Option<&str>) -> Option<Vec<automerge::ChangeHash>> {
    let first = message?.split('\n').next()?;
    let body = first.strip_prefix(CITATION_PREFIX)?;
    if body.is_empty() {
        return None;
    }
    let mut heads = Vec::new();
    for part in body.split(',') {
        if heads.len() == MAX_CITED_HEADS {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
        heads.push(automerge::ChangeHash(bytes.try_into().ok()?));
    }
    Some(heads)
}

#[cfg(test)]
mod citation_tests {
    use super::*;
    use automerge::ChangeHash;

    #[test]
    fn citations_round_trip_and_refuse_junk() {
        let heads = vec![ChangeHash([2; 32]), ChangeHash([1; 32])];
        let msg = encode_citation(&heads);
        let mut sorted = heads.clone();
        sorted.sort();
        assert_eq!(decode_citation(Some(&msg)), Some(sorted));
        assert_eq!(decode_citation(None), None);
        assert_eq!(decode_citation(Some("fix typo")), None);
        let noted = format!("{msg}\nimported from 0a0b #3: xa1:AAAA");
        assert_eq!(decode_citation(Some(&noted)), decode_citation(Some(&msg)));
        assert_eq!(decode_citation(Some(&format!("note\n{msg}"))), None);
        assert_eq!(decode_citation(Some("xa1:")), None);
        assert_eq!(decode_citation(Some("xa1:!!")), None);
        assert_eq!(decode_citation(Some("xa1:AQI")), None, "2 bytes is no hash");
        let many = vec![ChangeHash([3; 32]); MAX_CITED_HEADS + 1];
        assert_eq!(decode_citation(Some(&encode_citation(&many))), None);
    }
}
