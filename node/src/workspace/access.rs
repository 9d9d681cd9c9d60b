//! The access document: who is a member with which role, and what was revoked.

use std::collections::BTreeSet;

use automerge::legacy::{Key as LegacyKey, ObjectId as LegacyObj};
use automerge::transaction::Transactable;
use automerge::{Change, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};
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
        // The root is an admin by its key, whatever the document says: no
        // entry, revocation or role change can take that away.
        if self.is_root(peer) {
            return MemberState::Member(Role::Admin);
        }
        let map = |obj: &ObjId, key: &str| self.map_in(obj, key, heads);
        let get = |obj: &ObjId, key: &str| self.get_in(obj, key, heads);
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

    /// The token id recorded for `peer`'s membership.
    pub fn member_token_id(&self, peer: &str) -> Option<String> {
        let am = &self.access.am;
        let entry = get_obj(am, &get_obj(am, &ROOT, "members")?, peer)?;
        get_str(am, &entry, "token_id")
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
        let am = &mut self.access.am;
        let Some(entry) = get_obj(am, &ROOT, "members").and_then(|m| get_obj(am, &m, peer)) else {
            return Ok(Vec::new());
        };
        am.put(&entry, "token_id", token_id).map_err(damaged)?;
        Ok(self.access.commit(now_ms, &[]).into_iter().collect())
    }

    /// Whether `peer` is the workspace's creator (its root key's peer id).
    pub fn is_root(&self, peer: &str) -> bool {
        self.root_peer().is_some_and(|r| r == peer)
    }

    /// The creator's peer id, from the root key.
    pub fn root_peer(&self) -> Option<String> {
        let key = self.root_key()?;
        xencode_protocol::ids::peer_id_of(&key)
            .ok()
            .map(|p| p.to_string())
    }

    /// When `peer`'s membership ends (unix ms), as recorded at `heads` (or
    /// now): the expiry of the token it was invited with. `None`: it does
    /// not end (the root's never does).
    pub fn member_expiry_at(&self, peer: &str, heads: Option<&[ChangeHash]>) -> Option<u64> {
        if self.is_root(peer) {
            return None;
        }
        let members = self.map_in(&ROOT, "members", heads)?;
        let entry = self.map_in(&members, peer, heads)?;
        match self.get_in(&entry, "expires_at", heads) {
            Some((Value::Scalar(v), _)) => match v.as_ref() {
                ScalarValue::Uint(n) => Some(*n),
                ScalarValue::Int(n) => Some(u64::try_from(*n).unwrap_or(0)),
                _ => None,
            },
            _ => None,
        }
    }

    /// The role `peer` may act with at `now_ms`: its role, unless revoked or
    /// its membership expired.
    pub fn effective_role(&self, peer: &str, now_ms: u64) -> Option<Role> {
        if self
            .member_expiry_at(peer, None)
            .is_some_and(|e| now_ms > e)
        {
            return None;
        }
        self.role_of(peer)
    }

    /// Whether a change to the access document, by someone other than the
    /// root, reaches for what is the root's alone: the workspace's root key,
    /// nonce or creation time, the root's member entry, a revocation naming
    /// the root or the root's token, or replacing the members or revoked map
    /// wholesale. Read against the change's own dependencies, so every node
    /// answers alike. Such a change is refused as a whole.
    pub fn touches_root(&self, change: &Change) -> bool {
        let Some(root) = self.root_peer() else {
            return false;
        };
        let am = &self.access.am;
        let deps = change.deps();
        let at = |obj: &ObjId, key: &str| match am.get_at(obj, key, deps) {
            Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
            _ => None,
        };
        let members = at(&ROOT, "members");
        let revoked_exists = at(&ROOT, "revoked").is_some();
        let entry = members.as_ref().and_then(|m| at(m, &root));
        let token = entry
            .as_ref()
            .and_then(|e| match am.get_at(e, "token_id", deps) {
                Ok(Some((Value::Scalar(v), _))) => v.as_str().map(str::to_owned),
                _ => None,
            });
        let entry = entry.map(|e| e.to_string());
        let named = |s: &str| s == root || token.as_deref() == Some(s);
        for op in change.decode().operations {
            if entry.as_deref() == Some(op.obj.to_string().as_str()) {
                return true;
            }
            if let LegacyKey::Map(key) = &op.key {
                if named(key) {
                    return true;
                }
                if op.obj == LegacyObj::Root {
                    let replaces = match key.as_str() {
                        "root_key" | "nonce" | "created_at" => true,
                        "members" => members.is_some(),
                        "revoked" => revoked_exists,
                        _ => false,
                    };
                    if replaces {
                        return true;
                    }
                }
            }
            if let automerge::legacy::OpType::Put(ScalarValue::Str(v)) = &op.action
                && named(v)
            {
                return true;
            }
        }
        false
    }

    /// A value of the access document, now or as it was at `heads`.
    fn get_in(
        &self,
        obj: &ObjId,
        key: &str,
        heads: Option<&[ChangeHash]>,
    ) -> Option<(Value<'_>, ObjId)> {
        let am = &self.access.am;
        match heads {
            Some(h) => am.get_at(obj, key, h),
            None => am.get(obj, key),
        }
        .ok()
        .flatten()
    }

    /// A map of the access document, now or as it was at `heads`.
    fn map_in(&self, obj: &ObjId, key: &str, heads: Option<&[ChangeHash]>) -> Option<ObjId> {
        match self.get_in(obj, key, heads) {
            Some((Value::Object(ObjType::Map), id)) => Some(id),
            _ => None,
        }
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

    /// Records `peer` as a member with `role`, added by `author`, holding
    /// the token `token_id` that expires at `expires_ms` (the membership
    /// ends with it). A revoked peer invited again is reinstated: its old
    /// tokens stay revoked by their ids, and the revocation of the peer
    /// itself is lifted, so the new token works everywhere.
    pub fn add_member(
        &mut self,
        peer: &str,
        role: Role,
        token_id: &str,
        expires_ms: Option<u64>,
        author: &Author,
        now_ms: u64,
    ) -> Result<Vec<NewChange>, WorkspaceError> {
        let am = &mut self.access.am;
        if let Some(revoked) = get_obj(am, &ROOT, "revoked")
            && let Some(old) = get_obj(am, &revoked, peer)
        {
            let old_token = get_str(am, &old, "token_id");
            if let Some(t) = old_token.filter(|t| t != token_id) {
                let e = am
                    .put_object(&revoked, t.as_str(), ObjType::Map)
                    .map_err(damaged)?;
                am.put(&e, "kind", "token").map_err(damaged)?;
                am.put(&e, "peer", peer).map_err(damaged)?;
                am.put(&e, "by", author.peer_id.as_str()).map_err(damaged)?;
                am.put(&e, "at", now_ms).map_err(damaged)?;
            }
            am.delete(&revoked, peer).map_err(damaged)?;
        }
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
        if let Some(e) = expires_ms {
            am.put(&m, "expires_at", e).map_err(damaged)?;
        }
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
