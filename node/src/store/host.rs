//! The sync engine's view of the store ([`Host`]): the loaded documents,
//! stored signatures, memberships and the access rules.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{AutoCommit, ChangeHash};
use redb::{Database, ReadableDatabase};
use xencode_protocol::envelope::SignedHead;
use xencode_protocol::policy::{self, AdmitError, WriteRule};
use xencode_protocol::sync::{Access, Host, WriteDecision};
use xencode_protocol::{DocId, PeerId, WorkspaceId};

use super::tables::{Membership, SIGNATURES, SYNC_STATES};
use crate::workspace::{Author, MemberState, Workspace, access_doc_id};

/// Most documents a workspace may grow to through sync.
const MAX_DOCS_PER_WORKSPACE: usize = 100_000;

pub(super) struct HostView<'a> {
    pub workspaces: &'a mut BTreeMap<WorkspaceId, Workspace>,
    pub memberships: &'a BTreeMap<WorkspaceId, Membership>,
    pub db: Option<&'a Database>,
    pub author: &'a Author,
    pub write_rule: &'a mut WriteRule,
    /// Tokens verified off the store thread: admission only reads them.
    pub tokens: &'a super::tokens::TokenVerifier,
}

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

    fn names_documents(&self, ws: &WorkspaceId, doc: &DocId) -> bool {
        *doc == crate::workspace::index_doc_id(ws)
    }

    fn has_document(&self, ws: &WorkspaceId, doc: &DocId) -> bool {
        self.workspaces.get(ws).is_some_and(|w| {
            *doc == w.access.id
                || *doc == w.index.id
                || w.files.contains_key(doc)
                || w.is_file_doc(doc)
        })
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
        w.files
            .get_or_new(*doc, &self.author.actor)
            .map(|d| &mut d.am)
    }

    fn heads(&mut self, ws: &WorkspaceId, doc: &DocId) -> Option<Vec<ChangeHash>> {
        let w = self.workspaces.get_mut(ws)?;
        if *doc == w.access.id {
            return Some(w.access.heads());
        }
        if *doc == w.index.id {
            return Some(w.index.heads());
        }
        w.files.heads(doc)
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
    ) -> Result<Access, AdmitError> {
        let w = self
            .workspaces
            .get(ws)
            .ok_or(AdmitError::UnknownWorkspace)?;
        let root = root_key(w, self.memberships).ok_or(AdmitError::UnknownWorkspace)?;
        let verified = self.tokens.cached(&root, token);
        let verified = verified
            .as_ref()
            .map(|v| v.as_deref().map_err(Clone::clone));
        policy::admit(w.access_doc(), &root, verified, ws, peer, now_ms)
    }

    /// The write rule, `xencode_protocol::policy` (the same code the
    /// engine's tests and the simulator run), over this workspace's access
    /// document.
    fn may_write(
        &mut self,
        ws: &WorkspaceId,
        doc: &DocId,
        author: &[u8; 32],
        change: xencode_protocol::policy::Written<'_>,
    ) -> WriteDecision {
        let Some(w) = self.workspaces.get(ws) else {
            return WriteDecision::Deny;
        };
        let is_access = *doc == access_doc_id(ws);
        let root = root_key(w, self.memberships);
        self.write_rule
            .may_write(ws, w.access_doc(), root, is_access, author, change)
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
    use automerge::{ActorId, Change, ROOT, ReadDoc};
    use xencode_protocol::envelope::encode_citation;
    use xencode_protocol::ids::{actor_id, peer_id_of};

    use super::*;
    use xencode_protocol::api::Role;

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
        let mut decisions = WriteRule::default();
        let tokens = super::super::tokens::TokenVerifier::default();
        let mut host = HostView {
            workspaces: &mut workspaces,
            memberships: &memberships,
            db: None,
            author: &admin,
            write_rule: &mut decisions,
            tokens: &tokens,
        };
        host.may_write(&id, &doc, &who.public_key, c.into())
    }

    #[test]
    fn a_write_is_judged_by_the_access_heads_it_cites() {
        let (admin, dev) = (author(1), author(2));
        let id = WorkspaceId::from_bytes([5; 16]);
        let (mut ws, _) = Workspace::create(id, &[0; 16], "team", &admin, 1_000).expect("create");
        ws.add_member(
            &dev.peer_id,
            Role::Developer,
            "token-1",
            None,
            &admin,
            2_000,
        )
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
        ws.add_member(
            &dev.peer_id,
            Role::Developer,
            "token-1",
            None,
            &admin,
            2_000,
        )
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
        ws.add_member(
            &author(4).peer_id,
            Role::Viewer,
            "token-2",
            None,
            &admin,
            3_000,
        )
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

    /// A change by `who` to a fork of the access document, made by `edit`.
    fn access_change(
        ws: &mut Workspace,
        who: &Author,
        edit: impl FnOnce(&mut AutoCommit),
    ) -> Change {
        let mut theirs = ws.access.am.fork();
        theirs.set_actor(who.actor.clone());
        edit(&mut theirs);
        theirs.commit();
        theirs.get_last_local_change().expect("change").clone()
    }

    fn map_in(am: &mut AutoCommit, key: &str) -> automerge::ObjId {
        match am.get(ROOT, key) {
            Ok(Some((_, m))) => m,
            _ => am
                .put_object(ROOT, key, automerge::ObjType::Map)
                .expect("map"),
        }
    }

    /// issue 12, finding 3: a delegated admin's access changes that reach
    /// for the root — revoking it by peer id or by token id, demoting its
    /// entry, replacing the root key — are refused as a whole, everywhere;
    /// its ordinary admin work is not.
    #[test]
    fn no_access_change_by_another_admin_can_touch_the_root() {
        let (root, admin) = (author(1), author(2));
        let id = WorkspaceId::from_bytes([8; 16]);
        let (mut ws, _) = Workspace::create(id, &[0; 16], "team", &root, 1_000).expect("create");
        ws.record_token_id(&root.peer_id, "root-token", 1_500)
            .expect("record");
        let root_token = ws.member_token_id(&root.peer_id).expect("root's token id");
        ws.add_member(&admin.peer_id, Role::Admin, "token-a", None, &root, 2_000)
            .expect("add");
        let access = access_doc_id(&id);
        let copy = |ws: &Workspace| {
            let mut c = Workspace::empty(id, &root);
            c.access.am = ws.access.am.clone();
            c
        };
        let root_peer = root.peer_id.clone();
        let attacks: Vec<(&str, Change)> = vec![
            (
                "revoke the root by peer id",
                access_change(&mut ws, &admin, |am| {
                    let r = map_in(am, "revoked");
                    let e = am
                        .put_object(&r, root_peer.as_str(), automerge::ObjType::Map)
                        .expect("e");
                    am.put(&e, "kind", "peer").expect("kind");
                }),
            ),
            (
                "revoke the root's token by id",
                access_change(&mut ws, &admin, |am| {
                    let r = map_in(am, "revoked");
                    let e = am
                        .put_object(&r, root_token.as_str(), automerge::ObjType::Map)
                        .expect("e");
                    am.put(&e, "kind", "token").expect("kind");
                }),
            ),
            (
                "name the root's token inside another entry",
                access_change(&mut ws, &admin, |am| {
                    let r = map_in(am, "revoked");
                    let e = am
                        .put_object(&r, "innocent", automerge::ObjType::Map)
                        .expect("e");
                    am.put(&e, "token_id", root_token.as_str()).expect("t");
                }),
            ),
            (
                "demote the root's entry",
                access_change(&mut ws, &admin, |am| {
                    let m = map_in(am, "members");
                    let e = match am.get(&m, root_peer.as_str()) {
                        Ok(Some((_, e))) => e,
                        other => panic!("no root entry: {other:?}"),
                    };
                    am.put(&e, "role", "viewer").expect("role");
                }),
            ),
            (
                "replace the root key",
                access_change(&mut ws, &admin, |am| {
                    am.put(ROOT, "root_key", hex::encode([9u8; 32]))
                        .expect("key");
                }),
            ),
            (
                "replace the members map",
                access_change(&mut ws, &admin, |am| {
                    am.put_object(ROOT, "members", automerge::ObjType::Map)
                        .expect("m");
                }),
            ),
        ];
        for (what, c) in attacks {
            assert_eq!(
                decide(copy(&ws), &admin, access, &c),
                WriteDecision::Deny,
                "{what}"
            );
        }
        // Revoking an ordinary member is still an admin's to do.
        let other = author(3);
        ws.add_member(&other.peer_id, Role::Viewer, "token-o", None, &root, 3_000)
            .expect("add");
        let fine = access_change(&mut ws, &admin, |am| {
            let r = map_in(am, "revoked");
            let e = am
                .put_object(&r, other.peer_id.as_str(), automerge::ObjType::Map)
                .expect("e");
            am.put(&e, "kind", "peer").expect("kind");
        });
        assert_eq!(
            decide(copy(&ws), &admin, access, &fine),
            WriteDecision::Allow
        );
        // And whatever the document says, the root stays an admin.
        xencode_protocol::apply::apply_changes(&mut ws.access.am, [fine]).expect("apply");
        assert_eq!(
            ws.member_state(&root.peer_id),
            MemberState::Member(Role::Admin)
        );
    }

    /// issue 12, finding 8: a membership ends with its token. A change
    /// stamped after the expiry recorded in the access document is refused
    /// by every node (the stamp is in the signed change), one stamped
    /// before it is accepted; re-invited after a revocation, a member
    /// writes again.
    #[test]
    fn a_membership_ends_with_its_token_and_a_revoked_member_can_be_reinstated() {
        let (admin, dev) = (author(1), author(2));
        let id = WorkspaceId::from_bytes([10; 16]);
        let (mut ws, _) = Workspace::create(id, &[0; 16], "team", &admin, 1_000).expect("create");
        let expiry = 50_000_000u64;
        ws.add_member(
            &dev.peer_id,
            Role::Developer,
            "token-1",
            Some(expiry),
            &admin,
            2_000,
        )
        .expect("add");
        let heads = ws.access.am.get_heads();
        let file = DocId::from_bytes([7; 16]);
        let stamped = |secs: i64| {
            let mut am = AutoCommit::new();
            am.set_actor(dev.actor.clone());
            am.put(ROOT, "text", "edit").expect("put");
            am.commit_with(
                CommitOptions::default()
                    .with_message(encode_citation(&heads))
                    .with_time(secs),
            );
            am.get_last_local_change().expect("change").clone()
        };
        let fork = |ws: &Workspace| {
            let mut c = Workspace::empty(id, &admin);
            c.access.am = ws.access.am.clone();
            c
        };
        let before = stamped(i64::try_from(expiry / 1000).expect("secs") - 1);
        let after = stamped(i64::try_from(expiry / 1000).expect("secs") + 1);
        assert_eq!(decide(fork(&ws), &dev, file, &before), WriteDecision::Allow);
        assert_eq!(decide(fork(&ws), &dev, file, &after), WriteDecision::Deny);
        assert_eq!(ws.effective_role(&dev.peer_id, expiry + 1), None);
        assert_eq!(
            ws.effective_role(&dev.peer_id, expiry - 1),
            Some(Role::Developer)
        );

        // Revoked, then invited again with a new token.
        ws.revoke(&dev.peer_id, &admin, 3_000).expect("revoke");
        assert_eq!(ws.member_state(&dev.peer_id), MemberState::Revoked);
        ws.add_member(
            &dev.peer_id,
            Role::Developer,
            "token-2",
            None,
            &admin,
            4_000,
        )
        .expect("re-add");
        assert_eq!(
            ws.member_state(&dev.peer_id),
            MemberState::Member(Role::Developer)
        );
        let revoked = ws.revoked_token_ids();
        assert!(revoked.contains("token-1"), "the old token stays revoked");
        assert!(!revoked.contains("token-2"), "the new one works");
    }
}
