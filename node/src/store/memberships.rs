//! This node's memberships: for each workspace it belongs to, the token it
//! presents, the root key and the inviter's contacts (the `memberships`
//! table), and the tokens verified off the store thread. Invitations, joins
//! and revocations are made here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand_core::OsRng;
use xencode_protocol::api::{InviteRequest, InviteResponse, Role, WorkspaceSummary};
use xencode_protocol::capability::{self, Right};
use xencode_protocol::invite::Invitation;
use xencode_protocol::sync::Input;
use xencode_protocol::{PeerId, WorkspaceId};

use super::actor::Actor;
use super::host::root_key;
use super::tables::Membership;
use super::tokens::TokenVerifier;
use super::{BadInvitation, BadRequest, Forbidden, NetCommand, StoreError};
use crate::workspace::Workspace;

/// This node's memberships, and the token verifier the roots are published to.
pub(super) struct Memberships {
    pub(super) map: BTreeMap<WorkspaceId, Membership>,
    /// Tokens verified off this thread, and the roots published for it.
    pub(super) tokens: Arc<TokenVerifier>,
}

impl Memberships {
    pub(super) fn new(tokens: Arc<TokenVerifier>) -> Self {
        Self {
            map: BTreeMap::new(),
            tokens,
        }
    }
}

impl Actor {
    pub(super) fn stage_membership(&mut self, ws: WorkspaceId, m: Membership) {
        self.members.map.insert(ws, m.clone());
        self.disk.staged_memberships.push((ws, m));
    }

    pub(super) fn my_role(&self, ws: &Workspace) -> Option<Role> {
        ws.effective_role(&self.author.peer_id, crate::now_ms())
    }

    pub(super) fn invite(
        &mut self,
        ws_id: WorkspaceId,
        request: InviteRequest,
        addrs: Vec<String>,
        now_ms: u64,
    ) -> Result<InviteResponse, StoreError> {
        let invitee: PeerId = request
            .peer_id
            .parse()
            .map_err(|_| BadRequest::NotAPeerId(request.peer_id.clone()))?;
        let ws = self
            .workspaces
            .get(&ws_id)
            .ok_or(StoreError::WorkspaceNotFound(ws_id))?;
        let role = self.my_role(ws);
        if !role.is_some_and(|r| r.allows(Right::Invite)) {
            return Err(Forbidden::NotAdmin("invite").into());
        }
        let root = root_key(ws, &self.members.map).ok_or(Forbidden::NotSynced)?;
        let nonce = ws.nonce().ok_or(Forbidden::NotSynced)?;
        let expires_ms = request
            .expires_secs
            .map(|s| now_ms.saturating_add(s.saturating_mul(1000)));
        let secret = self.signing.to_bytes();
        let token = if root == self.author.public_key {
            capability::mint(
                &secret,
                &ws_id,
                &invitee,
                request.role,
                expires_ms,
                &mut OsRng,
            )
        } else {
            let mine = self
                .members
                .map
                .get(&ws_id)
                .map(|m| m.token.clone())
                .unwrap_or_default();
            capability::delegate(
                &mine,
                &root,
                &secret,
                &ws_id,
                &invitee,
                request.role,
                expires_ms,
                now_ms,
                &mut OsRng,
            )
        }
        .map_err(Forbidden::Token)?;
        let grant =
            capability::authorize(&token, &root, &ws_id, &invitee, &BTreeSet::new(), now_ms)
                .map_err(StoreError::Minted)?;
        let name = ws.name();
        let ws = self
            .workspaces
            .get_mut(&ws_id)
            .ok_or(StoreError::WorkspaceNotFound(ws_id))?;
        let changes = ws.add_member(
            &invitee.to_string(),
            request.role,
            &grant.token_id,
            grant.expires_ms,
            &self.author,
            now_ms,
        )?;
        self.stage_local(ws_id, changes);
        let invitation = Invitation {
            workspace: ws_id,
            name,
            root_key: root,
            nonce,
            role: request.role,
            token,
            inviter: self.author.peer_id.clone(),
            addrs,
        };
        Ok(InviteResponse {
            token: invitation.encode(),
            token_id: grant.token_id,
            peer_id: invitee.to_string(),
            role: request.role,
            expires_at: grant.expires_ms,
        })
    }

    pub(super) fn join(
        &mut self,
        token: &str,
        now_ms: u64,
    ) -> Result<WorkspaceSummary, StoreError> {
        let inv = Invitation::decode(token).map_err(BadInvitation::from)?;
        let me = self.peer_id();
        // Verified by the handle before it asked (see `tokens`): a token not
        // verified yet is not verified here, on the store's thread.
        self.members
            .tokens
            .cached(&inv.root_key, &inv.token)
            .ok_or(BadInvitation::NotVerified)?
            .and_then(|v| v.grant(&inv.workspace, &me, &BTreeSet::new(), now_ms))
            .map_err(BadInvitation::from)?;
        let inviter: PeerId = inv
            .inviter
            .parse()
            .map_err(|_| BadInvitation::InviterNotAPeer)?;
        if !self.workspaces.contains_key(&inv.workspace) {
            let mut ws = Workspace::empty(inv.workspace, &self.author);
            ws.files.set_budget(self.disk.options.loaded_file_docs);
            self.workspaces.insert(inv.workspace, ws);
            self.disk.new_workspaces.push(inv.workspace);
        }
        let mut contacts = self
            .members
            .map
            .get(&inv.workspace)
            .map(|m| m.contacts.clone())
            .unwrap_or_default();
        contacts.retain(|(p, _)| *p != inv.inviter);
        contacts.push((inv.inviter.clone(), inv.addrs.clone()));
        self.stage_membership(
            inv.workspace,
            Membership {
                token: inv.token.clone(),
                root_key: inv.root_key,
                contacts,
            },
        );
        // The inviter's `Accept` is verified against this root.
        self.publish_roles();
        self.send_net(NetCommand::Dial {
            peer: inviter,
            addrs: inv.addrs.clone(),
        });
        // Already connected to the inviter? Open the session now.
        self.run_engine(Input::Join {
            peer: inviter,
            workspace: inv.workspace,
        });
        Ok(WorkspaceSummary {
            id: inv.workspace,
            name: inv.name,
            created_at: 0,
            owner: String::new(),
            role: inv.role,
            files: 0,
            standing: xencode_protocol::api::Standing::Member,
            effective_role: Some(inv.role),
        })
    }

    pub(super) fn revoke(
        &mut self,
        ws_id: WorkspaceId,
        target: &str,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let ws = self
            .workspaces
            .get(&ws_id)
            .ok_or(StoreError::WorkspaceNotFound(ws_id))?;
        if !self.my_role(ws).is_some_and(|r| r.allows(Right::Revoke)) {
            return Err(Forbidden::NotAdmin("revoke").into());
        }
        let target = target.trim();
        if target.is_empty() || target.len() > 200 || target.chars().any(char::is_control) {
            return Err(BadRequest::NoRevocationTarget.into());
        }
        let owner = ws.root_peer();
        let owner_token = owner.as_deref().and_then(|o| ws.member_token_id(o));
        if owner.as_deref() == Some(target) || owner_token.as_deref() == Some(target) {
            return Err(Forbidden::RevokingTheCreator.into());
        }
        let is_member = ws.member_peers().iter().any(|p| p == target);
        let is_token = target.len() == 128 && target.chars().all(|c| c.is_ascii_hexdigit());
        if !is_member && !is_token {
            return Err(BadRequest::UnknownRevocationTarget(target.to_owned()).into());
        }
        let ws = self
            .workspaces
            .get_mut(&ws_id)
            .ok_or(StoreError::WorkspaceNotFound(ws_id))?;
        let changes = ws.revoke(target, &self.author, now_ms)?;
        self.stage_local(ws_id, changes);
        Ok(())
    }

    pub(super) fn contacts(&self) -> Vec<(String, Vec<String>)> {
        // Members' signed cards first: newer than any invitation's word.
        let mut out: Vec<(String, Vec<String>)> = self.card_contacts();
        for m in self.members.map.values() {
            for (p, addrs) in &m.contacts {
                out.push((p.clone(), addrs.clone()));
            }
        }
        out
    }

    /// Workspaces this node created before root token ids were recorded:
    /// record its token's id in its own member entry now (staged; written
    /// with the first commit).
    pub(super) fn record_root_token_ids(&mut self) {
        let me = self.author.peer_id.clone();
        let now = crate::now_ms();
        let ids: Vec<WorkspaceId> = self.workspaces.keys().copied().collect();
        for id in ids {
            let (Some(ws), Some(m)) = (self.workspaces.get_mut(&id), self.members.map.get(&id))
            else {
                continue;
            };
            if !ws.is_root(&me) || ws.member_token_id(&me).is_some() {
                continue;
            }
            let Some(token_id) = capability::verify(&m.token, &m.root_key, now)
                .ok()
                .and_then(|v| v.revocation_ids.last().cloned())
            else {
                continue;
            };
            match ws.record_token_id(&me, &token_id, now) {
                Ok(changes) => self.stage_local(id, changes),
                Err(e) => {
                    tracing::warn!(workspace = %id, error = %e, "the root's token id was not recorded")
                }
            }
        }
    }

    /// Shares this node's role in each workspace (for the event stream's
    /// filter) and each workspace's root key (for the token verifier); only
    /// access documents, memberships and new workspaces change them.
    pub(super) fn publish_roles(&self) {
        let roots = self
            .workspaces
            .values()
            .filter_map(|ws| Some((ws.id, super::host::root_key(ws, &self.members.map)?)))
            .collect();
        self.members.tokens.set_roots(roots);
        let roles: BTreeMap<WorkspaceId, Role> = self
            .workspaces
            .values()
            .filter_map(|ws| Some((ws.id, ws.role_of(&self.author.peer_id)?)))
            .collect();
        if let Ok(mut shared) = self.stats.roles.write() {
            *shared = roles;
        }
        let now = crate::now_ms();
        let members: std::collections::HashSet<PeerId> = self
            .workspaces
            .values()
            .flat_map(|ws| ws.members())
            .filter(|m| !m.revoked && m.expires_at.is_none_or(|t| t > now))
            .filter(|m| m.peer_id != self.author.peer_id)
            .filter_map(|m| m.peer_id.parse().ok())
            .collect();
        if let Ok(mut shared) = self.stats.members.write() {
            *shared = members;
        }
    }
}
