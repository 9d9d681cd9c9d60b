//! The write rule: who may change which document of a workspace, read from
//! its access document at the point of history a change names.
//!
//! Pure (no I/O, no clock): the node's store, the engine's tests and the
//! simulator run this same code, so the rule proven in simulations is the
//! one users run. What it decides must be a function of the change and its
//! causal history only — the same answer on every node, whenever it is
//! asked — or nodes diverge for good (`docs/security.md`):
//!
//! - a change to the **access document** is judged at its own dependencies:
//!   its author must be an admin there (the root always is), and it may not
//!   reach for what is the root's alone ([`AccessDoc::touches_root`]) — or
//!   a member of any role setting its own display name and nothing else
//!   ([`AccessDoc::only_names_itself`]);
//! - any other change is judged at the access heads its commit message cites
//!   (`envelope::encode_citation`): its author must be a developer or admin,
//!   not revoked, there; no citation is refused, cited heads not here yet
//!   wait ([`WriteDecision::Unknown`]);
//! - a membership ends with its token: a change whose own (signed)
//!   timestamp is after the expiry recorded for its author at that point is
//!   refused.
//!
//! The access document's schema (written by the node's `workspace` module):
//! `{ name, created_at, owner, root_key (hex), nonce (hex), members: {peer:
//! {role, added_by, added_at, token_id, expires_at?, name?}}, revoked: {peer or
//! token id: {kind: "peer" | "token", by, at, token_id?, peer?}} }`.

use std::collections::{BTreeSet, HashMap};

use automerge::legacy::{Key as LegacyKey, ObjectId as LegacyObj, OpType as LegacyOp};
use automerge::{
    AutoCommit, Change, ChangeHash, ObjId, ObjType, ROOT, ReadDoc, ScalarValue, Value,
};

use crate::api::Role;
use crate::envelope::decode_citation;
use crate::ids::WorkspaceId;
use crate::sync::WriteDecision;

pub mod schema;

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

/// Read access to a workspace's access document.
#[derive(Clone, Copy)]
pub struct AccessDoc<'a>(pub &'a AutoCommit);

impl AccessDoc<'_> {
    /// A value, now or as it was at `heads`.
    fn get(
        &self,
        obj: &ObjId,
        key: &str,
        heads: Option<&[ChangeHash]>,
    ) -> Option<(Value<'_>, ObjId)> {
        match heads {
            Some(h) => self.0.get_at(obj, key, h),
            None => self.0.get(obj, key),
        }
        .ok()
        .flatten()
    }

    /// A map, now or as it was at `heads`.
    fn map(&self, obj: &ObjId, key: &str, heads: Option<&[ChangeHash]>) -> Option<ObjId> {
        match self.get(obj, key, heads) {
            Some((Value::Object(ObjType::Map), id)) => Some(id),
            _ => None,
        }
    }

    /// A string, now or as it was at `heads`.
    fn string(&self, obj: &ObjId, key: &str, heads: Option<&[ChangeHash]>) -> Option<String> {
        match self.get(obj, key, heads) {
            Some((Value::Scalar(v), _)) => v.as_str().map(str::to_owned),
            _ => None,
        }
    }

    /// The creator's ed25519 public key: the capability root.
    pub fn root_key(&self) -> Option<[u8; 32]> {
        let hex_key = self.string(&ROOT, "root_key", None)?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex_key, &mut key).ok()?;
        Some(key)
    }

    /// The creator's peer id, from the root key.
    pub fn root_peer(&self) -> Option<String> {
        let key = self.root_key()?;
        crate::ids::peer_id_of(&key).ok().map(|p| p.to_string())
    }

    /// Whether `peer` is the workspace's creator.
    pub fn is_root(&self, peer: &str) -> bool {
        self.root_peer().is_some_and(|r| r == peer)
    }

    /// What the document says of `peer` now.
    pub fn member_state(&self, peer: &str) -> MemberState {
        self.member_state_in(peer, None)
    }

    /// What the document said of `peer` at `heads`; `None` if some of those
    /// heads are not here (yet).
    pub fn member_state_at(&self, peer: &str, heads: &[ChangeHash]) -> Option<MemberState> {
        ReadDoc::get_missing_deps(self.0, heads)
            .is_empty()
            .then(|| self.member_state_in(peer, Some(heads)))
    }

    fn member_state_in(&self, peer: &str, heads: Option<&[ChangeHash]>) -> MemberState {
        // The root is an admin by its key, whatever the document says: no
        // entry, revocation or role change can take that away.
        if self.is_root(peer) {
            return MemberState::Member(Role::Admin);
        }
        if self
            .map(&ROOT, "revoked", heads)
            .and_then(|r| self.map(&r, peer, heads))
            .is_some()
        {
            return MemberState::Revoked;
        }
        self.map(&ROOT, "members", heads)
            .and_then(|m| self.map(&m, peer, heads))
            .and_then(|m| self.string(&m, "role", heads))
            .and_then(|r| Role::parse(&r))
            .map_or(MemberState::Unknown, MemberState::Member)
    }

    /// The role of `peer`, if it is a member that is not revoked.
    pub fn role_of(&self, peer: &str) -> Option<Role> {
        match self.member_state(peer) {
            MemberState::Member(r) => Some(r),
            _ => None,
        }
    }

    /// When `peer`'s membership ends (unix ms), as recorded at `heads` (or
    /// now): the expiry of the token it was invited with. `None`: it does
    /// not end (the root's never does).
    pub fn member_expiry_at(&self, peer: &str, heads: Option<&[ChangeHash]>) -> Option<u64> {
        if self.is_root(peer) {
            return None;
        }
        let members = self.map(&ROOT, "members", heads)?;
        let entry = self.map(&members, peer, heads)?;
        match self.get(&entry, "expires_at", heads) {
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

    /// The token id recorded for `peer`'s membership.
    pub fn member_token_id(&self, peer: &str) -> Option<String> {
        let members = self.map(&ROOT, "members", None)?;
        let entry = self.map(&members, peer, None)?;
        self.string(&entry, "token_id", None)
    }

    /// Revoked token ids and the token ids of revoked members.
    pub fn revoked_token_ids(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if let Some(revoked) = self.map(&ROOT, "revoked", None) {
            for key in self.0.keys(&revoked) {
                if let Some(entry) = self.map(&revoked, &key, None) {
                    if let Some(t) = self.string(&entry, "token_id", None) {
                        out.insert(t);
                    }
                    if self.string(&entry, "kind", None).as_deref() == Some("token") {
                        out.insert(key);
                    }
                }
            }
        }
        out
    }

    /// `peer`'s display name as its member entry holds it now, if it is a
    /// valid one ([`valid_member_name`]): shown, never trusted.
    pub fn member_name(&self, peer: &str) -> Option<String> {
        let members = self.map(&ROOT, "members", None)?;
        let entry = self.map(&members, peer, None)?;
        self.string(&entry, "name", None)
            .filter(|n| valid_member_name(n))
    }

    /// Whether `change` (to the access document, by `peer`) does nothing
    /// but set `peer`'s own display name: puts of one valid name string at
    /// key `name` of its own member entry, read at the change's
    /// dependencies. A member of any role may make such a change.
    pub fn only_names_itself(&self, peer: &str, change: &Change) -> bool {
        let deps = Some(change.deps());
        let Some(entry) = self
            .map(&ROOT, "members", deps)
            .and_then(|m| self.map(&m, peer, deps))
        else {
            return false;
        };
        let entry = entry.to_string();
        let ops = change.decode().operations;
        !ops.is_empty() && ops.iter().all(|op| {
            op.obj.to_string() == entry
                && matches!(&op.key, LegacyKey::Map(k) if k == "name")
                && matches!(&op.action, LegacyOp::Put(ScalarValue::Str(s)) if valid_member_name(s))
        })
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
        let deps = Some(change.deps());
        let members = self.map(&ROOT, "members", deps);
        let revoked_exists = self.map(&ROOT, "revoked", deps).is_some();
        let entry = members.as_ref().and_then(|m| self.map(m, &root, deps));
        let token = entry
            .as_ref()
            .and_then(|e| self.string(e, "token_id", deps));
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
            if let LegacyOp::Put(ScalarValue::Str(v)) = &op.action
                && named(v)
            {
                return true;
            }
        }
        false
    }
}

/// Longest display name a member may give itself, in characters.
pub const MAX_MEMBER_NAME_CHARS: usize = 64;

/// A display name: 1 to [`MAX_MEMBER_NAME_CHARS`] characters, not only
/// white space, no control characters.
pub fn valid_member_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.chars().count() <= MAX_MEMBER_NAME_CHARS
        && !name.chars().any(char::is_control)
}

/// What the write rule reads of a change: a whole change, or only its
/// metadata (a change inside a document chunk, which Automerge would have
/// to rebuild from its operations to hand out whole). Metadata is enough
/// for every document but the access document, whose changes are judged on
/// their content too: there, metadata alone decides nothing
/// ([`WriteDecision::Unknown`]) and the change must come whole.
#[derive(Debug, Clone, Copy)]
pub enum Written<'a> {
    Change(&'a Change),
    Meta(&'a automerge::ChangeMetadata<'a>),
}

impl<'a> From<&'a Change> for Written<'a> {
    fn from(c: &'a Change) -> Self {
        Written::Change(c)
    }
}

impl Written<'_> {
    fn hash(&self) -> ChangeHash {
        match self {
            Written::Change(c) => c.hash(),
            Written::Meta(m) => m.hash,
        }
    }
    fn deps(&self) -> &[ChangeHash] {
        match self {
            Written::Change(c) => c.deps(),
            Written::Meta(m) => &m.deps,
        }
    }
    fn message(&self) -> Option<&str> {
        match self {
            Written::Change(c) => c.message(),
            Written::Meta(m) => m.message.as_deref(),
        }
    }
    fn timestamp(&self) -> i64 {
        match self {
            Written::Change(c) => c.timestamp(),
            Written::Meta(m) => m.timestamp,
        }
    }
}

/// Decisions already made. A decision rests on a fixed point of the access
/// document's history, which never changes, so it holds forever; only the
/// size is bounded.
#[derive(Debug, Clone, Default)]
pub struct WriteRule {
    /// (workspace, author, the change itself if it is to the access doc,
    /// the heads judged at) -> (allowed by role, when the membership ends).
    #[allow(clippy::type_complexity)]
    decided:
        HashMap<(WorkspaceId, [u8; 32], Option<ChangeHash>, Vec<ChangeHash>), (bool, Option<u64>)>,
}

/// Decisions remembered before the cache starts afresh.
const MAX_DECISIONS: usize = 16_384;

impl WriteRule {
    /// Whether `change`, by `author` (whose signature covers it), is accepted
    /// into a document of `ws` whose access document is `access` (`root`:
    /// the workspace's root key, from the document or the node's membership
    /// record before it has synced). `is_access`: the change is to the
    /// access document itself.
    pub fn may_write(
        &mut self,
        ws: &WorkspaceId,
        access: AccessDoc<'_>,
        root: Option<[u8; 32]>,
        is_access: bool,
        author: &[u8; 32],
        change: Written<'_>,
    ) -> WriteDecision {
        if is_access && root == Some(*author) {
            return WriteDecision::Allow;
        }
        let content = match change {
            Written::Change(c) => Some(c),
            Written::Meta(_) if is_access => return WriteDecision::Unknown,
            Written::Meta(_) => None,
        };
        let Ok(peer) = crate::ids::peer_id_of(author) else {
            return WriteDecision::Deny;
        };
        let basis = if is_access {
            change.deps().to_vec()
        } else {
            match decode_citation(change.message()) {
                Some(heads) => heads,
                None => return WriteDecision::Deny,
            }
        };
        // An access change is judged on its own content too (whether it
        // reaches for the root's entry), so its decision is its own.
        let own = is_access.then(|| change.hash());
        let key = (*ws, *author, own, basis);
        let (allowed, expires) = match self.decided.get(&key) {
            Some(&decided) => decided,
            None => {
                let needed = if is_access {
                    Role::Admin
                } else {
                    Role::Developer
                };
                let peer = peer.to_string();
                let Some(state) = access.member_state_at(&peer, &key.3) else {
                    return WriteDecision::Unknown;
                };
                // Any member may name itself; nothing else in the access
                // document is a non-admin's to change.
                let content_ok = |check: &dyn Fn(&Change) -> bool| content.is_some_and(check);
                let allowed = (matches!(state, MemberState::Member(role) if role >= needed)
                    && !(is_access && content_ok(&|c| access.touches_root(c))))
                    || (is_access
                        && matches!(state, MemberState::Member(_))
                        && content_ok(&|c| access.only_names_itself(&peer, c)));
                let decided = (allowed, access.member_expiry_at(&peer, Some(&key.3)));
                if self.decided.len() >= MAX_DECISIONS {
                    self.decided.clear();
                }
                self.decided.insert(key, decided);
                decided
            }
        };
        // A membership ends with its token: a change its author stamped
        // after the expiry recorded at that point of history is refused.
        // The stamp is in the signed change, so every node decides alike.
        let expired = expires
            .is_some_and(|e| change.timestamp() > i64::try_from(e / 1000).unwrap_or(i64::MAX));
        if allowed && !expired {
            WriteDecision::Allow
        } else {
            WriteDecision::Deny
        }
    }
}

/// Why a peer's session is refused (for the node's own log: a peer is only
/// ever told `not authorized`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmitError {
    #[error("this node holds no such workspace (or not its root key yet)")]
    UnknownWorkspace,
    #[error("the peer's membership was revoked")]
    Revoked,
    #[error("the token was not verified (off the store thread) before it was presented")]
    Unverified,
    #[error(transparent)]
    Token(#[from] crate::capability::CapabilityError),
}

impl AdmitError {
    /// A fixed name for the kind of refusal (a metric label).
    pub fn label(&self) -> &'static str {
        match self {
            AdmitError::UnknownWorkspace => "unknown_workspace",
            AdmitError::Revoked => "member_revoked",
            AdmitError::Unverified => "unverified",
            AdmitError::Token(e) => e.label(),
        }
    }
}

/// Every label [`AdmitError::label`] gives, for metrics to show at zero.
pub const ADMIT_LABELS: &[&str] = &[
    "unknown_workspace",
    "member_revoked",
    "unverified",
    "bad_token",
    "wrong_workspace",
    "wrong_holder",
    "token_expired",
    "token_revoked",
    "forbidden",
];

/// Whether `peer` may open a session for `ws`: the root by its
/// authenticated peer id alone; anyone else by a verified token
/// (`verified`, from [`crate::capability::verify`], or `None` if it was not
/// verified) that is theirs, unexpired at `now_ms` and not revoked, and not
/// as a revoked member. What it may do follows from the token's role.
pub fn admit(
    access: AccessDoc<'_>,
    root: &[u8; 32],
    verified: Option<Result<&crate::capability::Verified, crate::capability::CapabilityError>>,
    ws: &WorkspaceId,
    peer: &libp2p_identity::PeerId,
    now_ms: u64,
) -> Result<crate::sync::Access, AdmitError> {
    use crate::capability::Right;
    if crate::ids::peer_id_of(root).is_ok_and(|r| r == *peer) {
        return Ok(crate::sync::Access {
            read: true,
            write: true,
        });
    }
    if access.member_state(&peer.to_string()) == MemberState::Revoked {
        return Err(AdmitError::Revoked);
    }
    let grant = verified.ok_or(AdmitError::Unverified)??.grant(
        ws,
        peer,
        &access.revoked_token_ids(),
        now_ms,
    )?;
    Ok(crate::sync::Access {
        read: grant.role.allows(Right::Read),
        write: grant.role.allows(Right::Write),
    })
}

#[cfg(test)]
mod tests {
    use automerge::ActorId;
    use automerge::transaction::Transactable;
    use ed25519_dalek::SigningKey;

    use super::*;
    use crate::ids::{actor_id, peer_id_of};

    const WS: WorkspaceId = WorkspaceId::from_bytes([3; 16]);

    struct Who {
        key: [u8; 32],
        peer: String,
    }

    fn who(n: u8) -> Who {
        let key = SigningKey::from_bytes(&[n; 32]).verifying_key().to_bytes();
        let peer = peer_id_of(&key).expect("peer id").to_string();
        Who { key, peer }
    }

    /// An access document: `root` created it, `viewer` and `dev` are
    /// members, `gone` was a viewer and is revoked.
    fn access(root: &Who, viewer: &Who, dev: &Who, gone: &Who) -> AutoCommit {
        let mut am = AutoCommit::new().with_actor(ActorId::from(actor_id(&root.key, 0).as_slice()));
        schema::genesis(
            &mut am,
            "ws",
            schema::Creator {
                peer: &root.peer,
                root_key: &root.key,
            },
            &[1; 16],
            1,
        )
        .expect("genesis");
        for (m, role) in [
            (viewer, Role::Viewer),
            (dev, Role::Developer),
            (gone, Role::Viewer),
        ] {
            schema::add_member(&mut am, &m.peer, role, "t", None, &root.peer, 2).expect("add");
        }
        schema::revoke(&mut am, &gone.peer, &root.peer, 3).expect("revoke");
        am.commit();
        am
    }

    /// A change `author` makes to its copy of `am`.
    fn change_by(am: &mut AutoCommit, author: &Who, edit: impl FnOnce(&mut AutoCommit)) -> Change {
        let mut fork = am
            .fork()
            .with_actor(ActorId::from(actor_id(&author.key, 0).as_slice()));
        edit(&mut fork);
        fork.commit();
        fork.get_last_local_change().expect("a change").clone()
    }

    fn entry(am: &AutoCommit, peer: &str) -> ObjId {
        let members = AccessDoc(am).map(&ROOT, "members", None).expect("members");
        AccessDoc(am).map(&members, peer, None).expect("entry")
    }

    #[test]
    fn a_member_of_any_role_may_name_itself_and_nothing_else() {
        let (root, viewer, dev, gone, stranger) = (who(1), who(2), who(3), who(4), who(5));
        let mut am = access(&root, &viewer, &dev, &gone);
        let own = |am: &mut AutoCommit, w: &Who, name: &'static str| {
            let peer = w.peer.clone();
            change_by(am, w, move |f| {
                schema::set_member_name(f, &peer, name).expect("name");
            })
        };
        let decide = |am: &AutoCommit, w: &Who, c: &Change| {
            WriteRule::default().may_write(
                &WS,
                AccessDoc(am),
                Some(root.key),
                true,
                &w.key,
                c.into(),
            )
        };
        // Allowed: a viewer and a developer naming themselves.
        for w in [&viewer, &dev] {
            let c = own(&mut am, w, "Alex from design");
            assert_eq!(decide(&am, w, &c), WriteDecision::Allow, "{}", w.peer);
        }
        // Refused: a revoked member, a stranger, a name that is too long or
        // has a control character.
        let c = own(&mut am, &gone, "still here");
        assert_eq!(decide(&am, &gone, &c), WriteDecision::Deny);
        let c = change_by(&mut am, &stranger, |f| {
            let e = entry(f, &viewer.peer);
            f.put(&e, "name", "spoof").expect("put");
        });
        assert_eq!(decide(&am, &stranger, &c), WriteDecision::Deny);
        let long = "x".repeat(MAX_MEMBER_NAME_CHARS + 1);
        let c = change_by(&mut am, &viewer, |f| {
            let e = entry(f, &viewer.peer);
            f.put(&e, "name", long.as_str()).expect("put");
        });
        assert_eq!(decide(&am, &viewer, &c), WriteDecision::Deny);
        let c = own(&mut am, &viewer, "bell\u{7}");
        assert_eq!(decide(&am, &viewer, &c), WriteDecision::Deny);
        // Refused: naming someone else, or naming itself and raising its
        // role in the same change, or its role alone.
        let root_peer = root.peer.clone();
        let c = change_by(&mut am, &viewer, |f| {
            schema::set_member_name(f, &root_peer, "not me").expect("name");
        });
        assert_eq!(decide(&am, &viewer, &c), WriteDecision::Deny);
        let viewer_peer = viewer.peer.clone();
        let c = change_by(&mut am, &viewer, |f| {
            let e = entry(f, &viewer_peer);
            f.put(&e, "name", "Vi").expect("put");
            f.put(&e, "role", "admin").expect("put");
        });
        assert_eq!(decide(&am, &viewer, &c), WriteDecision::Deny);
        let c = change_by(&mut am, &viewer, |f| {
            let e = entry(f, &viewer_peer);
            f.put(&e, "role", "admin").expect("put");
        });
        assert_eq!(decide(&am, &viewer, &c), WriteDecision::Deny);
        // An object put at `name` (not a string) is refused too.
        let c = change_by(&mut am, &viewer, |f| {
            let e = entry(f, &viewer_peer);
            f.put_object(&e, "name", ObjType::Map).expect("put");
        });
        assert_eq!(decide(&am, &viewer, &c), WriteDecision::Deny);
        // Read back: the name a member gave itself, once applied.
        let c = own(&mut am, &viewer, "Vi");
        crate::apply::apply_changes(&mut am, vec![c]).expect("apply");
        assert_eq!(
            AccessDoc(&am).member_name(&viewer.peer).as_deref(),
            Some("Vi")
        );
        assert_eq!(AccessDoc(&am).member_name(&dev.peer), None);
    }
}
