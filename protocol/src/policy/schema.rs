//! Writing the access document: the one place its schema is written, so the
//! node and the simulator make the same document the write rule reads
//! ([`super::AccessDoc`]). Each function stages operations in `am`; the
//! caller commits (with its own time) and signs.
//!
//! ```text
//! { name, created_at, owner, root_key (hex), nonce (hex),
//!   members: { <peer>: { role, added_by, added_at, token_id?, expires_at? } },
//!   revoked: { <peer or token id>: { kind: "peer" | "token", by, at,
//!                                     token_id?, peer? } } }
//! ```

use automerge::transaction::Transactable;
use automerge::{AutoCommit, AutomergeError, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value};

use crate::api::Role;

/// The map at `key` of `obj`, made empty first if there is none (or
/// something else is there).
pub fn ensure_map(am: &mut AutoCommit, obj: &ObjId, key: &str) -> Result<ObjId, AutomergeError> {
    match am.get(obj, key)? {
        Some((Value::Object(ObjType::Map), id)) => Ok(id),
        _ => am.put_object(obj, key, ObjType::Map),
    }
}

/// The map at `key` of `obj`, if there is one.
fn map(am: &AutoCommit, obj: &ObjId, key: &str) -> Option<ObjId> {
    match am.get(obj, key) {
        Ok(Some((Value::Object(ObjType::Map), id))) => Some(id),
        _ => None,
    }
}

/// The string at `key` of `obj`, if there is one.
fn string(am: &AutoCommit, obj: &ObjId, key: &str) -> Option<String> {
    match am.get(obj, key) {
        Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
            ScalarValue::Str(s) => Some(s.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// The creator of a workspace.
#[derive(Debug, Clone, Copy)]
pub struct Creator<'a> {
    /// Its peer id (the `owner`, and its own member entry's key).
    pub peer: &'a str,
    /// Its ed25519 public key: the workspace's capability root.
    pub root_key: &'a [u8; 32],
}

/// A new workspace's access document: its name, its creator as root and
/// first admin, empty revocations.
pub fn genesis(
    am: &mut AutoCommit,
    name: &str,
    creator: Creator<'_>,
    nonce: &[u8; 16],
    now_ms: u64,
) -> Result<(), AutomergeError> {
    am.put(ROOT, "name", name)?;
    am.put(ROOT, "created_at", now_ms)?;
    am.put(ROOT, "owner", creator.peer)?;
    am.put(ROOT, "root_key", hex::encode(creator.root_key))?;
    am.put(ROOT, "nonce", hex::encode(nonce))?;
    let members = am.put_object(ROOT, "members", ObjType::Map)?;
    let me = am.put_object(&members, creator.peer, ObjType::Map)?;
    am.put(&me, "role", Role::Admin.as_str())?;
    am.put(&me, "added_by", creator.peer)?;
    am.put(&me, "added_at", now_ms)?;
    am.put_object(ROOT, "revoked", ObjType::Map)?;
    Ok(())
}

/// Sets `peer`'s display name in its member entry — the one change to the
/// access document a member of any role may make, to its own entry only
/// (see `AccessDoc::only_names_itself`). Returns whether anything changed
/// (no entry, or the same name: nothing to do).
pub fn set_member_name(
    am: &mut AutoCommit,
    peer: &str,
    name: &str,
) -> Result<bool, AutomergeError> {
    let Some(members) = map(am, &ROOT, "members") else {
        return Ok(false);
    };
    let Some(entry) = map(am, &members, peer) else {
        return Ok(false);
    };
    if string(am, &entry, "name").as_deref() == Some(name) {
        return Ok(false);
    }
    am.put(&entry, "name", name)?;
    Ok(true)
}

/// Renames the workspace (an admin's change; any admin may make it).
pub fn rename(am: &mut AutoCommit, name: &str) -> Result<(), AutomergeError> {
    am.put(ROOT, "name", name)
}

/// Records `peer` as a member with `role`, added by `by`, holding the token
/// `token_id` that expires at `expires_ms` (the membership ends with it). A
/// revoked peer invited again is reinstated: its old token stays revoked by
/// its id, and the revocation of the peer itself is lifted, so the new token
/// works everywhere.
pub fn add_member(
    am: &mut AutoCommit,
    peer: &str,
    role: Role,
    token_id: &str,
    expires_ms: Option<u64>,
    by: &str,
    now_ms: u64,
) -> Result<(), AutomergeError> {
    if let Some(revoked) = map(am, &ROOT, "revoked")
        && let Some(old) = map(am, &revoked, peer)
    {
        if let Some(t) = string(am, &old, "token_id").filter(|t| t != token_id) {
            let e = am.put_object(&revoked, t.as_str(), ObjType::Map)?;
            am.put(&e, "kind", "token")?;
            am.put(&e, "peer", peer)?;
            am.put(&e, "by", by)?;
            am.put(&e, "at", now_ms)?;
        }
        am.delete(&revoked, peer)?;
    }
    let members = ensure_map(am, &ROOT, "members")?;
    let m = am.put_object(&members, peer, ObjType::Map)?;
    am.put(&m, "role", role.as_str())?;
    am.put(&m, "added_by", by)?;
    am.put(&m, "added_at", now_ms)?;
    am.put(&m, "token_id", token_id)?;
    if let Some(e) = expires_ms {
        am.put(&m, "expires_at", e)?;
    }
    Ok(())
}

/// Revokes a member (by peer id; its token id is recorded with it) or a
/// token (by token id), by `by`.
pub fn revoke(
    am: &mut AutoCommit,
    target: &str,
    by: &str,
    now_ms: u64,
) -> Result<(), AutomergeError> {
    let entry = map(am, &ROOT, "members").and_then(|m| map(am, &m, target));
    let token_id = entry.as_ref().and_then(|e| string(am, e, "token_id"));
    let revoked = ensure_map(am, &ROOT, "revoked")?;
    let e = am.put_object(&revoked, target, ObjType::Map)?;
    am.put(&e, "kind", if entry.is_some() { "peer" } else { "token" })?;
    am.put(&e, "by", by)?;
    am.put(&e, "at", now_ms)?;
    if let Some(t) = token_id {
        am.put(&e, "token_id", t)?;
    }
    Ok(())
}

/// Records the token id of `peer`'s membership. Returns whether there was a
/// member entry to record it in.
pub fn record_token_id(
    am: &mut AutoCommit,
    peer: &str,
    token_id: &str,
) -> Result<bool, AutomergeError> {
    let Some(entry) = map(am, &ROOT, "members").and_then(|m| map(am, &m, peer)) else {
        return Ok(false);
    };
    am.put(&entry, "token_id", token_id)?;
    Ok(true)
}

/// Peers listed as members (revoked or not).
pub fn member_peers(am: &AutoCommit) -> Vec<String> {
    map(am, &ROOT, "members")
        .map(|m| am.keys(&m).collect())
        .unwrap_or_default()
}
