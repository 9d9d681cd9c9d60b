//! The sync engine's view of the store ([`Host`]): the loaded documents,
//! stored signatures, memberships and the access rules.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{AutoCommit, Change, ChangeHash};
use redb::{Database, ReadableDatabase};
use xencode_protocol::api::Role;
use xencode_protocol::capability::{self, Right};
use xencode_protocol::envelope::{SignedHead, decode_citation};
use xencode_protocol::sync::{Access, Host, WriteDecision};
use xencode_protocol::{DocId, PeerId, WorkspaceId};

use super::tables::{Membership, SIGNATURES, SYNC_STATES};
use crate::workspace::{Author, Doc, MemberState, Workspace, access_doc_id};

/// Most documents a workspace may grow to through sync.
const MAX_DOCS_PER_WORKSPACE: usize = 100_000;

pub(super) struct HostView<'a> {
    pub workspaces: &'a mut BTreeMap<WorkspaceId, Workspace>,
    pub memberships: &'a BTreeMap<WorkspaceId, Membership>,
    pub db: Option<&'a Database>,
    pub author: &'a Author,
    pub write_decisions: &'a mut WriteDecisions,
}

/// Write decisions already made. A decision rests on a fixed point of the
/// access document's history, which never changes, so it holds forever;
/// only the size is bounded.
#[derive(Debug, Clone, Default)]
pub(super) struct WriteDecisions {
    /// (workspace, author, judged against the access doc itself, the heads
    /// judged at) -> allowed.
    decided: std::collections::HashMap<(WorkspaceId, [u8; 32], bool, Vec<ChangeHash>), bool>,
}

/// Decisions remembered before the cache starts afresh.
const MAX_WRITE_DECISIONS: usize = 16_384;

impl HostView<'_> {
    fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Option<T>) -> Option<T> {
        let tx = self.db?.begin_read().ok()?;
        f(&tx)
    }
}

/// The root key of a workspace: from the access document, or from the
/// membership record of a workspace joined but not yet synced.
pub(super) fn root_key(
    ws: &Workspace,
    memberships: &BTreeMap<WorkspaceId, Membership>,
) -> Option<[u8; 32]> {
    memberships
        .get(&ws.id)
        .map(|m| m.root_key)
        .or_else(|| ws.root_key())
}

impl Host for HostView<'_> {
    fn documents(&self, ws: &WorkspaceId) -> Vec<DocId> {
        let Some(w) = self.workspaces.get(ws) else {
            return Vec::new();
        };
        let mut docs = vec![w.access.id, w.index.id];
        let mut files: BTreeSet<DocId> = w.file_doc_ids().into_iter().collect();
        files.extend(w.files.keys().copied());
        docs.extend(files);
        docs
    }

    fn document(&mut self, ws: &WorkspaceId, doc: &DocId) -> Option<&mut AutoCommit> {
        let w = self.workspaces.get_mut(ws)?;
        if *doc == w.access.id {
            return Some(&mut w.access.am);
        }
        if *doc == w.index.id {
            return Some(&mut w.index.am);
        }
        if !w.files.contains_key(doc) && w.files.len() >= MAX_DOCS_PER_WORKSPACE {
            return None;
        }
        let actor = self.author.actor.clone();
        Some(
            &mut w
                .files
                .entry(*doc)
                .or_insert_with(|| Doc::new(*doc, &actor))
                .am,
        )
    }

    fn signature(&self, _ws: &WorkspaceId, doc: &DocId, hash: &ChangeHash) -> Option<SignedHead> {
        self.read(|tx| {
            let table = tx.open_table(SIGNATURES).ok()?;
            let value = table.get((*doc.as_bytes(), hash.0)).ok()??;
            postcard::from_bytes(value.value()).ok()
        })
    }

    fn token(&self, ws: &WorkspaceId) -> Option<Vec<u8>> {
        self.memberships.get(ws).map(|m| m.token.clone())
    }

    fn workspaces_for(&self, peer: &PeerId) -> Vec<WorkspaceId> {
        let peer = peer.to_string();
        self.workspaces
            .values()
            .filter(|w| {
                matches!(w.member_state(&peer), MemberState::Member(_))
                    || self
                        .memberships
                        .get(&w.id)
                        .is_some_and(|m| m.contacts.iter().any(|(p, _)| *p == peer))
            })
            .map(|w| w.id)
            .collect()
    }

    fn admit(
        &mut self,
        peer: &PeerId,
        ws: &WorkspaceId,
        token: &[u8],
        now_ms: u64,
    ) -> Result<Access, String> {
        let w = self.workspaces.get(ws).ok_or("not authorized")?;
        if w.member_state(&peer.to_string()) == MemberState::Revoked {
            return Err("this peer's membership was revoked".into());
        }
        let root = root_key(w, self.memberships).ok_or("not authorized")?;
        let grant = capability::authorize(token, &root, ws, peer, &w.revoked_token_ids(), now_ms)
            .map_err(|e| e.to_string())?;
        Ok(Access {
            read: grant.role.allows(Right::Read),
            write: grant.role.allows(Right::Write),
        })
    }

    /// The rule (ARCHITECTURE section 3, `docs/security.md`): the author's
    /// role is read from the access document *at a point of its history the
    /// change names*, so every node decides alike. A change to the access
    /// document is judged at its own dependencies (admins only; the root
    /// always); any other change at the access heads its message cites
    /// (developers and admins). No citation: refused. Cited heads not here
    /// yet: pending.
    fn may_write(
        &mut self,
        ws: &WorkspaceId,
        doc: &DocId,
        author: &[u8; 32],
        change: &Change,
    ) -> WriteDecision {
        let Some(w) = self.workspaces.get(ws) else {
            return WriteDecision::Deny;
        };
        let is_access = *doc == access_doc_id(ws);
        if is_access && root_key(w, self.memberships) == Some(*author) {
            return WriteDecision::Allow;
        }
        let Ok(peer) = xencode_protocol::ids::peer_id_of(author) else {
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
        let key = (*ws, *author, is_access, basis);
        if let Some(&allowed) = self.write_decisions.decided.get(&key) {
            return if allowed {
                WriteDecision::Allow
            } else {
                WriteDecision::Deny
            };
        }
        let needed = if is_access {
            Role::Admin
        } else {
            Role::Developer
        };
        let Some(state) = w.member_state_at(&peer.to_string(), &key.3) else {
            return WriteDecision::Unknown;
        };
        let allowed = matches!(state, MemberState::Member(role) if role >= needed);
        let cache = &mut self.write_decisions.decided;
        if cache.len() >= MAX_WRITE_DECISIONS {
            cache.clear();
        }
        cache.insert(key, allowed);
        if allowed {
            WriteDecision::Allow
        } else {
            WriteDecision::Deny
        }
    }

    fn sync_state(&self, peer: &PeerId, doc: &DocId) -> Option<Vec<u8>> {
        let peer = peer.to_string();
        self.read(|tx| {
            let table = tx.open_table(SYNC_STATES).ok()?;
            let value = table.get((peer.as_str(), *doc.as_bytes())).ok()??;
            Some(value.value().to_vec())
        })
    }
}

#[cfg(test)]
mod tests {
    //! The write rule decides by the history a change names, never by what
    //! the deciding node has seen since: both sides of the revocation window.

    use automerge::transaction::{CommitOptions, Transactable};
    use automerge::{ActorId, ROOT, ReadDoc};
    use xencode_protocol::envelope::encode_citation;
    use xencode_protocol::ids::{actor_id, peer_id_of};

    use super::*;

    fn author(n: u8) -> Author {
        let public = ed25519_dalek::SigningKey::from_bytes(&[n; 32])
            .verifying_key()
            .to_bytes();
        Author {
            peer_id: peer_id_of(&public).expect("peer id").to_string(),
            public_key: public,
            actor: ActorId::from(actor_id(&public, 0).as_slice()),
        }
    }

    /// A change by `who` to a fresh document, citing `cites`.
    fn change(who: &Author, cites: Option<&[ChangeHash]>) -> Change {
        let mut am = AutoCommit::new();
        am.set_actor(who.actor.clone());
        am.put(ROOT, "text", "edit").expect("put");
        let mut options = CommitOptions::default();
        if let Some(heads) = cites {
            options = options.with_message(encode_citation(heads));
        }
        am.commit_with(options);
        am.get_last_local_change().expect("change").clone()
    }

    fn decide(ws: Workspace, who: &Author, doc: DocId, c: &Change) -> WriteDecision {
        let id = ws.id;
        let mut workspaces = BTreeMap::from([(id, ws)]);
        let memberships = BTreeMap::new();
        let admin = author(1);
        let mut decisions = WriteDecisions::default();
        let mut host = HostView {
            workspaces: &mut workspaces,
            memberships: &memberships,
            db: None,
            author: &admin,
            write_decisions: &mut decisions,
        };
        host.may_write(&id, &doc, &who.public_key, c)
    }

    #[test]
    fn a_write_is_judged_by_the_access_heads_it_cites() {
        let (admin, dev) = (author(1), author(2));
        let id = WorkspaceId::from_bytes([5; 16]);
        let (mut ws, _) = Workspace::create(id, &[0; 16], "team", &admin, 1_000).expect("create");
        ws.add_member(&dev.peer_id, Role::Developer, "token-1", &admin, 2_000)
            .expect("add");
        let member = ws.access.am.get_heads();
        // A node that has not heard of the revocation yet.
        let mut unaware = Workspace::empty(id, &admin);
        unaware.access.am = ws.access.am.fork();
        ws.revoke(&dev.peer_id, &admin, 3_000).expect("revoke");
        let revoked = ws.access.am.get_heads();
        let file = DocId::from_bytes([7; 16]);
        let mut fresh = || {
            let mut copy = Workspace::empty(id, &admin);
            copy.access.am = ws.access.am.fork();
            copy
        };

        // Made after the author saw its revocation: refused, everywhere.
        let later = change(&dev, Some(&revoked));
        assert_eq!(decide(fresh(), &dev, file, &later), WriteDecision::Deny);
        // A node that lacks the revocation does not allow it: it waits.
        let mut copy = Workspace::empty(id, &admin);
        copy.access.am = unaware.access.am.fork();
        assert_eq!(decide(copy, &dev, file, &later), WriteDecision::Unknown);

        // Concurrent with the revocation (the window docs/security.md
        // describes): allowed, and alike on a node that saw the revocation
        // and one that did not.
        let concurrent = change(&dev, Some(&member));
        assert_eq!(
            decide(fresh(), &dev, file, &concurrent),
            WriteDecision::Allow
        );
        assert_eq!(
            decide(unaware, &dev, file, &concurrent),
            WriteDecision::Allow
        );

        // No citation, or a citation of history nobody has.
        assert_eq!(
            decide(fresh(), &dev, file, &change(&dev, None)),
            WriteDecision::Deny
        );
        let unknown = change(&dev, Some(&[ChangeHash([9; 32])]));
        assert_eq!(
            decide(fresh(), &dev, file, &unknown),
            WriteDecision::Unknown
        );
        // A stranger, even citing real heads.
        let stranger = author(3);
        let c = change(&stranger, Some(&member));
        assert_eq!(decide(fresh(), &stranger, file, &c), WriteDecision::Deny);
    }

    #[test]
    fn only_admins_change_the_access_document_judged_at_its_own_past() {
        let (admin, dev) = (author(1), author(2));
        let id = WorkspaceId::from_bytes([6; 16]);
        let (mut ws, _) = Workspace::create(id, &[0; 16], "team", &admin, 1_000).expect("create");
        ws.add_member(&dev.peer_id, Role::Developer, "token-1", &admin, 2_000)
            .expect("add");
        let access = access_doc_id(&id);
        // The developer promotes itself: its change's past says developer.
        let mut theirs = ws.access.am.fork();
        theirs.set_actor(dev.actor.clone());
        let members = match theirs.get(ROOT, "members") {
            Ok(Some((_, m))) => m,
            other => panic!("no members map: {other:?}"),
        };
        let entry = theirs
            .put_object(&members, dev.peer_id.as_str(), automerge::ObjType::Map)
            .expect("entry");
        theirs.put(&entry, "role", "admin").expect("role");
        theirs.commit();
        let promote = theirs.get_last_local_change().expect("change").clone();
        let copy = |ws: &mut Workspace| {
            let mut c = Workspace::empty(id, &admin);
            c.access.am = ws.access.am.fork();
            c
        };
        assert_eq!(
            decide(copy(&mut ws), &dev, access, &promote),
            WriteDecision::Deny
        );
        // The root's own access changes are always its to make.
        ws.add_member(&author(4).peer_id, Role::Viewer, "token-2", &admin, 3_000)
            .expect("add");
        let by_root = ws
            .access
            .am
            .get_last_local_change()
            .expect("change")
            .clone();
        assert_eq!(
            decide(copy(&mut ws), &admin, access, &by_root),
            WriteDecision::Allow
        );
    }
}
