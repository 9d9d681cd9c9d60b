//! The access document: who is a member with which role, and what was revoked.

use std::collections::BTreeSet;

use automerge::ROOT;
use xencode_protocol::api::Role;
pub use xencode_protocol::policy::MemberState;
use xencode_protocol::policy::{AccessDoc, schema};

use super::{Author, NewChange, Workspace, WorkspaceError, damaged, get_str, get_u64};

impl Workspace {
    /// The access document, to read with the write rule's own code.
    pub fn access_doc(&self) -> AccessDoc<'_> {
        AccessDoc(&self.access.am)
    }

    /// The creator's ed25519 public key: the capability root.
    pub fn root_key(&self) -> Option<[u8; 32]> {
        self.access_doc().root_key()
    }

    /// The nonce the workspace id was derived with.
    pub fn nonce(&self) -> Option<[u8; 16]> {
        let hex_nonce = get_str(&self.access.am, &ROOT, "nonce")?;
        let mut nonce = [0u8; 16];
        hex::decode_to_slice(hex_nonce, &mut nonce).ok()?;
        Some(nonce)
    }

    /// What the access document says of `peer`.
    pub fn member_state(&self, peer: &str) -> MemberState {
        self.access_doc().member_state(peer)
    }

    /// The token id recorded for `peer`'s membership.
    pub fn member_token_id(&self, peer: &str) -> Option<String> {
        self.access_doc().member_token_id(peer)
    }

    /// Records the token id of `peer`'s membership (the root records its
    /// own: no other node could learn it, and a revocation naming it must
    /// be recognisable everywhere as one aimed at the root).
    pub fn record_token_id(
        &mut self,
        peer: &str,
        token_id: &str,
        now_ms: u64,
    ) -> Result<Vec<NewChange>, WorkspaceError> {
        if !schema::record_token_id(&mut self.access.am, peer, token_id).map_err(damaged)? {
            return Ok(Vec::new());
        }
        Ok(self.access.commit(now_ms, &[]).into_iter().collect())
    }

    /// Whether `peer` is the workspace's creator (its root key's peer id).
    pub fn is_root(&self, peer: &str) -> bool {
        self.access_doc().is_root(peer)
    }

    /// The creator's peer id, from the root key.
    pub fn root_peer(&self) -> Option<String> {
        self.access_doc().root_peer()
    }

    /// When `peer`'s membership ends (unix ms), now.
    pub fn member_expiry(&self, peer: &str) -> Option<u64> {
        self.access_doc().member_expiry_at(peer, None)
    }

    /// The role `peer` may act with at `now_ms`: its role, unless revoked or
    /// its membership expired.
    pub fn effective_role(&self, peer: &str, now_ms: u64) -> Option<Role> {
        self.access_doc().effective_role(peer, now_ms)
    }

    /// The role of `peer`, if it is a member that is not revoked.
    pub fn role_of(&self, peer: &str) -> Option<Role> {
        self.access_doc().role_of(peer)
    }

    /// Revoked token ids and the token ids of revoked members.
    pub fn revoked_token_ids(&self) -> BTreeSet<String> {
        self.access_doc().revoked_token_ids()
    }

    /// Records `peer` as a member with `role`, added by `author`, holding
    /// the token `token_id` that expires at `expires_ms`
    /// ([`schema::add_member`]: a revoked peer invited again is reinstated).
    pub fn add_member(
        &mut self,
        peer: &str,
        role: Role,
        token_id: &str,
        expires_ms: Option<u64>,
        author: &Author,
        now_ms: u64,
    ) -> Result<Vec<NewChange>, WorkspaceError> {
        schema::add_member(
            &mut self.access.am,
            peer,
            role,
            token_id,
            expires_ms,
            &author.peer_id,
            now_ms,
        )
        .map_err(damaged)?;
        Ok(self.access.commit(now_ms, &[]).into_iter().collect())
    }

    /// Revokes a member (by peer id) or a token (by token id).
    pub fn revoke(
        &mut self,
        target: &str,
        author: &Author,
        now_ms: u64,
    ) -> Result<Vec<NewChange>, WorkspaceError> {
        schema::revoke(&mut self.access.am, target, &author.peer_id, now_ms).map_err(damaged)?;
        Ok(self.access.commit(now_ms, &[]).into_iter().collect())
    }

    /// Renames the workspace (an admin's change to the access document;
    /// the name is checked by the caller).
    pub fn rename(&mut self, name: &str, now_ms: u64) -> Result<Vec<NewChange>, WorkspaceError> {
        schema::rename(&mut self.access.am, name).map_err(damaged)?;
        Ok(self.access.commit(now_ms, &[]).into_iter().collect())
    }

    /// Sets this node's own display name in its member entry (any member
    /// may: the write rule's one exception for non-admins); no change if
    /// it has no entry yet or the name is the same.
    pub fn set_own_name(
        &mut self,
        me: &str,
        name: &str,
        now_ms: u64,
    ) -> Result<Vec<NewChange>, WorkspaceError> {
        if !schema::set_member_name(&mut self.access.am, me, name).map_err(damaged)? {
            return Ok(Vec::new());
        }
        Ok(self.access.commit(now_ms, &[]).into_iter().collect())
    }

    /// Peers listed as members (revoked or not), for dialing.
    pub fn member_peers(&self) -> Vec<String> {
        schema::member_peers(&self.access.am)
    }

    /// When the workspace was created (0 if the access document is not here yet).
    pub fn created_at(&self) -> u64 {
        get_u64(&self.access.am, &ROOT, "created_at").unwrap_or(0)
    }
}
