//! The invitation string `xencode invite` prints and `xencode join` takes:
//! the capability token plus what the invitee needs to find and trust the
//! workspace (its root key and nonce, so the id can be checked, and where the
//! inviter listens).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::api::Role;
use crate::ids::WorkspaceId;

const PREFIX: &str = "xencode1.";
/// Longest invitation string accepted.
pub const MAX_INVITATION_CHARS: usize = 32 * 1024;

/// Everything a joining node needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    pub workspace: WorkspaceId,
    pub name: String,
    pub root_key: [u8; 32],
    pub nonce: [u8; 16],
    pub role: Role,
    /// The biscuit capability token.
    pub token: Vec<u8>,
    /// The inviter's peer id and listen addresses.
    pub inviter: String,
    pub addrs: Vec<String>,
}

impl Invitation {
    /// The printable form.
    pub fn encode(&self) -> String {
        let bytes = postcard::to_stdvec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parses the printable form; checks that the workspace id matches the
    /// root key and nonce.
    pub fn decode(s: &str) -> Result<Self, InviteError> {
        let s = s.trim();
        if s.len() > MAX_INVITATION_CHARS {
            return Err(InviteError::TooLong);
        }
        let body = s.strip_prefix(PREFIX).ok_or(InviteError::NotAnInvitation)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| InviteError::BadBase64)?;
        let inv: Invitation = postcard::from_bytes(&bytes).map_err(|_| InviteError::Damaged)?;
        if WorkspaceId::derive(&inv.root_key, &inv.nonce) != inv.workspace {
            return Err(InviteError::WrongWorkspace);
        }
        Ok(inv)
    }
}

/// Why an invitation string cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    #[error("the invitation is too long")]
    TooLong,
    #[error("not a xencode invitation (it should start with \"xencode1.\")")]
    NotAnInvitation,
    #[error("the invitation is damaged (bad base64); copy it again")]
    BadBase64,
    #[error("the invitation is damaged; copy it again")]
    Damaged,
    #[error("the invitation's workspace id does not match its root key")]
    WrongWorkspace,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invitations_round_trip_and_are_checked() {
        let root = [3; 32];
        let nonce = [4; 16];
        let inv = Invitation {
            workspace: WorkspaceId::derive(&root, &nonce),
            name: "team".into(),
            root_key: root,
            nonce,
            role: Role::Developer,
            token: vec![1, 2, 3],
            inviter: "12D3KooW".into(),
            addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
        };
        let s = inv.encode();
        assert_eq!(Invitation::decode(&s), Ok(inv.clone()));
        assert_eq!(
            Invitation::decode("hello"),
            Err(InviteError::NotAnInvitation)
        );
        assert!(Invitation::decode(&s[..s.len() - 3]).is_err());
        let mut forged = inv;
        forged.root_key = [5; 32];
        assert_eq!(
            Invitation::decode(&forged.encode()),
            Err(InviteError::WrongWorkspace)
        );
    }
}
