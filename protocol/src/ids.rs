//! Identifiers: workspaces, documents, Automerge actors and peers.
//!
//! Ids are fixed-size byte strings shown as lowercase hex. A workspace id is
//! derived from its creator's public key and a nonce the caller supplies, so
//! the creator's key (the capability root) is bound into the id. An Automerge
//! actor id is derived from the author's public key and an epoch number, so
//! every change names its author and a restored node can start a fresh epoch.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length in bytes of workspace and document ids.
pub const ID_LEN: usize = 16;

/// A malformed id string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdParseError {
    /// Wrong number of characters.
    #[error("an id is {expected} hex characters, got {got}")]
    Length { expected: usize, got: usize },
    /// A character outside `0-9a-f`.
    #[error("an id may contain only hex digits 0-9 and a-f")]
    NotHex,
}

fn parse_hex_id(s: &str) -> Result<[u8; ID_LEN], IdParseError> {
    if s.len() != ID_LEN * 2 {
        return Err(IdParseError::Length {
            expected: ID_LEN * 2,
            got: s.chars().count(),
        });
    }
    let mut out = [0u8; ID_LEN];
    hex::decode_to_slice(s.to_ascii_lowercase(), &mut out).map_err(|_| IdParseError::NotHex)?;
    Ok(out)
}

macro_rules! hex_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; ID_LEN]);

        impl $name {
            /// Wraps raw id bytes.
            pub const fn from_bytes(bytes: [u8; ID_LEN]) -> Self {
                Self(bytes)
            }
            /// The raw id bytes.
            pub const fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex_id(s).map(Self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "pattern": format!("^[0-9a-f]{{{}}}$", 2 * ID_LEN),
                })
            }
        }
    };
}

hex_id!(
    /// A workspace: derived from the creator's public key and a nonce.
    WorkspaceId
);
hex_id!(
    /// One Automerge document inside a workspace (access, index, or a file).
    DocId
);

impl WorkspaceId {
    /// Derives the id of a workspace created by `creator` (an ed25519 public
    /// key) with the caller's random `nonce`.
    pub fn derive(creator: &[u8; 32], nonce: &[u8; 16]) -> Self {
        let mut h = blake3::Hasher::new_derive_key("xencode 2026 workspace id v1");
        h.update(creator);
        h.update(nonce);
        Self(truncate(h.finalize()))
    }

    /// The gossipsub topic of the workspace's announcements. Derived by a
    /// keyed hash so the topic name does not reveal the workspace id.
    pub fn topic(&self) -> String {
        let mut h = blake3::Hasher::new_derive_key("xencode 2026 announcement topic v1");
        h.update(&self.0);
        format!("/xencode/ann/1/{}", hex::encode(truncate(h.finalize())))
    }
}

impl DocId {
    /// Derives a document id from its workspace and a per-document nonce.
    pub fn derive(workspace: &WorkspaceId, nonce: &[u8; 16]) -> Self {
        let mut h = blake3::Hasher::new_derive_key("xencode 2026 document id v1");
        h.update(workspace.as_bytes());
        h.update(nonce);
        Self(truncate(h.finalize()))
    }
}

fn truncate(hash: blake3::Hash) -> [u8; ID_LEN] {
    let mut out = [0u8; ID_LEN];
    out.copy_from_slice(&hash.as_bytes()[..ID_LEN]);
    out
}

/// The Automerge actor id an author uses in `epoch`: the first 16 bytes of a
/// keyed hash of the author's ed25519 public key and the epoch number.
///
/// A node starts a new epoch whenever its store may be behind what peers
/// already hold (after a restore), so it never reuses an (actor, seq) pair.
pub fn actor_id(author: &[u8; 32], epoch: u64) -> [u8; ID_LEN] {
    let mut h = blake3::Hasher::new_derive_key("xencode 2026 automerge actor v1");
    h.update(author);
    h.update(&epoch.to_le_bytes());
    truncate(h.finalize())
}

/// The libp2p peer id of an ed25519 public key.
pub fn peer_id_of(public_key: &[u8; 32]) -> Result<libp2p_identity::PeerId, IdParseError> {
    let pk = libp2p_identity::ed25519::PublicKey::try_from_bytes(public_key)
        .map_err(|_| IdParseError::NotHex)?;
    Ok(libp2p_identity::PublicKey::from(pk).to_peer_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_id_round_trips_through_display_and_serde() {
        let id = WorkspaceId::derive(&[7; 32], &[1; 16]);
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(s.parse::<WorkspaceId>(), Ok(id));
        let json = serde_json::to_string(&id).expect("serialize");
        assert_eq!(json, format!("\"{s}\""));
        let back: WorkspaceId = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, id);
    }

    #[test]
    fn workspace_id_depends_on_creator_and_nonce() {
        let a = WorkspaceId::derive(&[7; 32], &[1; 16]);
        assert_ne!(a, WorkspaceId::derive(&[8; 32], &[1; 16]));
        assert_ne!(a, WorkspaceId::derive(&[7; 32], &[2; 16]));
    }

    #[test]
    fn malformed_ids_are_refused() {
        assert!(matches!(
            "abc".parse::<DocId>(),
            Err(IdParseError::Length { .. })
        ));
        assert_eq!("zz".repeat(16).parse::<DocId>(), Err(IdParseError::NotHex));
        assert!("é".repeat(16).parse::<DocId>().is_err());
    }

    #[test]
    fn actor_ids_differ_by_epoch_and_author() {
        assert_ne!(actor_id(&[1; 32], 0), actor_id(&[1; 32], 1));
        assert_ne!(actor_id(&[1; 32], 0), actor_id(&[2; 32], 0));
        assert_eq!(actor_id(&[1; 32], 3), actor_id(&[1; 32], 3));
    }
}
