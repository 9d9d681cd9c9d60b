//! The access document: who is a member with which role, and what was revoked.

use std::collections::BTreeSet;

use automerge::transaction::Transactable;
use automerge::{ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
use xencode_protocol::api::Role;

use super::{Author, NewChange, Workspace, WorkspaceError, damaged, get_obj, get_str, get_u64};

/// What the access document says of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberState {
    /// A member with this role.
    Member(Role),
    /// Listed, then revoked.
    Revoked,
    /// Not listed (perhaps not yet synced).
    Unknown,
}

impl Workspace {
    /// The creator's ed25519 public key: the capability root.
    pub fn root_key(&self) -> Option<[u8; 32]> {
        let hex_key = get_str(&self.access.am, &ROOT, "root_key")?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex_key, &mut key).ok()?;
        Some(key)
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
        self.member_state_in(peer, None)
    }

    /// What the access document said of `peer` in the state at `heads`;
    /// `None` if some of those heads are not here (yet).
    pub fn member_state_at(&self, peer: &str, heads: &[ChangeHash]) -> Option<MemberState> {
        ReadDoc::get_missing_deps(&self.access.am, heads)
            .is_empty()
            .then(|| self.member_state_in(peer, Some(heads)))
    }

    fn member_state_in(&self, peer: &str, heads: Option<&[ChangeHash]>) -> MemberState {
        let am = &self.access.am;
        let get = |obj: &ObjId, key: &str| {
            match heads {
                Some(h) => am.get_at(obj, key, h),
                None => am.get(obj, key),
            }
            .ok()
            .flatten()
        };
        let map = |obj: &ObjId, key: &str| match get(obj, key) {
            Some((Value::Object(ObjType::Map), id)) => Some(id),
            _ => None,
        };
        if map(&ROOT, "revoked").and_then(|r| map(&r, peer)).is_some() {
            return MemberState::Revoked;
        }
        map(&ROOT, "members")
            .and_then(|m| map(&m, peer))
            .and_then(|m| match get(&m, "role") {
                Some((Value::Scalar(v), _)) => match v.as_ref() {
                    ScalarValue::Str(r) => Role::parse(r),
                    _ => None,
                },
                _ => None,
            })
            .map_or(MemberState::Unknown, MemberState::Member)
    }

    /// The role of `peer`, if it is a member that is not revoked.
    pub fn role_of(&self, peer: &str) -> Option<Role> {
        match self.member_state(peer) {
            MemberState::Member(r) => Some(r),
            _ => None,
        }
    }

    /// Revoked token ids and the token ids of revoked members.
    pub fn revoked_token_ids(&self) -> BTreeSet<String> {
        let am = &self.access.am;
        let mut out = BTreeSet::new();
        if let Some(revoked) = get_obj(am, &ROOT, "revoked") {
            for key in am.keys(&revoked) {
                if let Some(entry) = get_obj(am, &revoked, &key) {
                    if let Some(t) = get_str(am, &entry, "token_id") {
                        out.insert(t);
                    }
                    if get_str(am, &entry, "kind").as_deref() == Some("token") {
                        out.insert(key);
                    }
                }
            }
        }
        out
    }

    /// Records `peer` as a member with `role`, added by `author`.
    pub fn add_member(
        &mut self,
        peer: &str,
        role: Role,
        token_id: &str,
        author: &Author,
        now_ms: u64,
    ) -> Result<Vec<NewChange>, WorkspaceError> {
        let am = &mut self.access.am;
        let members = match get_obj(am, &ROOT, "members") {
            Some(m) => m,
            None => am
                .put_object(ROOT, "members", ObjType::Map)
                .map_err(damaged)?,
        };
        let m = am
            .put_object(&members, peer, ObjType::Map)
            .map_err(damaged)?;
        am.put(&m, "role", role.as_str()).map_err(damaged)?;
        am.put(&m, "added_by", author.peer_id.as_str())
            .map_err(damaged)?;
        am.put(&m, "added_at", now_ms).map_err(damaged)?;
        am.put(&m, "token_id", token_id).map_err(damaged)?;
        Ok(self.access.commit(now_ms, &[]).into_iter().collect())
    }

    /// Revokes a member (by peer id) or a token (by token id). Returns the
    /// changes and what was revoked.
    pub fn revoke(
        &mut self,
        target: &str,
        author: &Author,
        now_ms: u64,
    ) -> Result<Vec<NewChange>, WorkspaceError> {
        let is_member = get_obj(&self.access.am, &ROOT, "members")
            .and_then(|m| get_obj(&self.access.am, &m, target))
            .is_some();
        let token_id = get_obj(&self.access.am, &ROOT, "members")
            .and_then(|m| get_obj(&self.access.am, &m, target))
            .and_then(|m| get_str(&self.access.am, &m, "token_id"));
        let am = &mut self.access.am;
        let revoked = match get_obj(am, &ROOT, "revoked") {
            Some(r) => r,
            None => am
                .put_object(ROOT, "revoked", ObjType::Map)
                .map_err(damaged)?,
        };
        let entry = am
            .put_object(&revoked, target, ObjType::Map)
            .map_err(damaged)?;
        am.put(&entry, "kind", if is_member { "peer" } else { "token" })
            .map_err(damaged)?;
        am.put(&entry, "by", author.peer_id.as_str())
            .map_err(damaged)?;
        am.put(&entry, "at", now_ms).map_err(damaged)?;
        if let Some(t) = token_id {
            am.put(&entry, "token_id", t).map_err(damaged)?;
        }
        Ok(self.access.commit(now_ms, &[]).into_iter().collect())
    }

    /// Peers listed as members (revoked or not), for dialing.
    pub fn member_peers(&self) -> Vec<String> {
        let am = &self.access.am;
        get_obj(am, &ROOT, "members")
            .map(|m| am.keys(&m).collect())
            .unwrap_or_default()
    }

    /// When the workspace was created (0 if the access document is not here yet).
    pub fn created_at(&self) -> u64 {
        get_u64(&self.access.am, &ROOT, "created_at").unwrap_or(0)
    }
}
