//! The store actor's side of networking: running the sync engine over the
//! loaded documents, signing local changes, invitations, joins, revocations.

use std::collections::BTreeSet;

use automerge::{Change, ChangeHash};
use rand_core::OsRng;
use redb::{ReadableDatabase, ReadableTable};
use xencode_protocol::api::{
    InviteRequest, InviteResponse, NodeEvent, PeerInfo, PeerWorkspace, Role, SessionState,
    WorkspaceSummary,
};
use xencode_protocol::capability::{self, Right};
use xencode_protocol::envelope::SignedHead;
use xencode_protocol::invite::Invitation;
use xencode_protocol::sync::{Event, Input, Output};
use xencode_protocol::{DocId, PeerId, WorkspaceId};

use super::actor::{Actor, Staged};
use super::host::{HostView, root_key};
use super::tables::{MEMBERSHIPS, Membership};
use super::{NetCommand, StoreError};
use crate::workspace::{NewChange, Workspace};

impl Actor {
    pub(super) fn peer_id(&self) -> PeerId {
        match xencode_protocol::ids::peer_id_of(&self.author.public_key) {
            Ok(p) => p,
            Err(_) => unreachable!("the node's own key is a valid ed25519 key"),
        }
    }

    /// Stages changes made here, each signed by this node.
    pub(super) fn stage_local(&mut self, ws: WorkspaceId, changes: Vec<NewChange>) {
        for change in changes {
            let sig = SignedHead::sign(
                &self.signing,
                self.epoch,
                &ws,
                &change.doc,
                change.change.hash().0,
            );
            self.staged.push(Staged {
                ws,
                change,
                signatures: vec![sig],
                local: true,
            });
        }
    }

    pub(super) fn stage_membership(&mut self, ws: WorkspaceId, m: Membership) {
        self.memberships.insert(ws, m.clone());
        self.staged_memberships.push((ws, m));
    }

    pub(super) fn load_memberships(
        &self,
    ) -> Result<std::collections::BTreeMap<WorkspaceId, Membership>, String> {
        let read = self.db()?.begin_read().map_err(|e| e.to_string())?;
        let table = read.open_table(MEMBERSHIPS).map_err(|e| e.to_string())?;
        let mut out = std::collections::BTreeMap::new();
        for entry in table.iter().map_err(|e| e.to_string())? {
            let (k, v) = entry.map_err(|e| e.to_string())?;
            let m: Membership = postcard::from_bytes(v.value())
                .map_err(|e| format!("membership record unreadable: {e}"))?;
            out.insert(WorkspaceId::from_bytes(k.value()), m);
        }
        Ok(out)
    }

    pub(super) fn read_membership(&self, ws: &WorkspaceId) -> Result<Option<Membership>, String> {
        let read = self.db()?.begin_read().map_err(|e| e.to_string())?;
        let table = read.open_table(MEMBERSHIPS).map_err(|e| e.to_string())?;
        let value = table.get(*ws.as_bytes()).map_err(|e| e.to_string())?;
        value
            .map(|v| postcard::from_bytes(v.value()).map_err(|e| e.to_string()))
            .transpose()
    }

    /// Feeds the sync engine and carries out what it asks.
    pub(super) fn run_engine(&mut self, input: Input) {
        match &input {
            Input::Connected { peer } => self.stats.publish(NodeEvent::Peer {
                peer: peer.to_string(),
                connected: true,
            }),
            Input::Disconnected { peer } => self.stats.publish(NodeEvent::Peer {
                peer: peer.to_string(),
                connected: false,
            }),
            _ => {}
        }
        self.drive_engine(|engine, host, now| engine.handle(host, input, now));
    }

    /// Closes sessions whose peer was revoked (or whose token no longer passes).
    pub(super) fn revalidate_sessions(&mut self) {
        self.drive_engine(|engine, host, now| engine.revalidate(host, now));
    }

    /// Runs `step` on the engine over the loaded documents, then carries out
    /// its outputs.
    ///
    /// Local changes are committed first: the engine offers peers whatever
    /// the documents hold, and a change must be durable — and its signature
    /// readable — before it leaves the node. Otherwise a peer receives a
    /// change with no signature covering it, parks it, and (the change being
    /// in Automerge's `sent_hashes`) never gets it again.
    fn drive_engine(
        &mut self,
        step: impl FnOnce(&mut xencode_protocol::sync::Engine, &mut HostView<'_>, u64),
    ) {
        if self.staged.iter().any(|s| s.local) {
            self.flush();
        }
        let now = crate::now_ms();
        let mut host = HostView {
            workspaces: &mut self.workspaces,
            memberships: &self.memberships,
            db: self.db.as_ref(),
            author: &self.author,
            write_rule: &mut self.write_rule,
            tokens: &self.tokens,
        };
        step(&mut self.engine, &mut host, now);
        self.drain_engine();
    }

    fn drain_engine(&mut self) {
        let mut access_changed = false;
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Send { peer, frame } => self.send_net(NetCommand::Send { peer, frame }),
                Output::Disconnect { peer, reason } => {
                    tracing::warn!(%peer, %reason, "disconnecting a misbehaving peer");
                    self.send_net(NetCommand::Disconnect { peer, reason });
                }
                Output::Persist {
                    workspace,
                    doc,
                    changes,
                    signatures,
                } => {
                    access_changed |= doc == crate::workspace::access_doc_id(&workspace);
                    self.stage_remote(workspace, doc, changes, signatures);
                }
                Output::Announce { workspace, digest } => {
                    self.send_net(NetCommand::Announce { workspace, digest });
                }
                Output::Dial { peer } => {
                    let addrs = self.known_addresses(&peer);
                    tracing::debug!(%peer, "a member announced changes; dialing it");
                    self.send_net(NetCommand::Dial { peer, addrs });
                }
                Output::SaveSyncState { peer, doc, state } => {
                    self.staged_sync_states.push((peer.to_string(), doc, state));
                }
                Output::Event(e) => self.record_event(e),
            }
        }
        if access_changed {
            self.revalidate_sessions();
        }
    }

    fn stage_remote(
        &mut self,
        ws: WorkspaceId,
        doc: DocId,
        changes: Vec<Vec<u8>>,
        signatures: Vec<SignedHead>,
    ) {
        let mut sigs = signatures;
        for raw in changes {
            let Ok(change) = Change::from_bytes(raw) else {
                continue;
            };
            let hash = change.hash();
            let (mine, rest): (Vec<SignedHead>, Vec<SignedHead>) =
                sigs.into_iter().partition(|s| ChangeHash(s.hash) == hash);
            sigs = rest;
            self.staged.push(Staged {
                ws,
                change: NewChange { doc, change },
                signatures: mine,
                local: false,
            });
        }
    }

    fn record_event(&mut self, e: Event) {
        let event = match e {
            Event::Rejected {
                peer,
                workspace,
                reason,
                count,
            } => {
                tracing::warn!(%peer, %workspace, reason = reason.as_str(), count, "refused changes from a peer");
                self.metrics.changes_rejected(reason.as_str(), count as u64);
                self.audit_peer(
                    &peer,
                    "sync.write",
                    workspace,
                    false,
                    format!("{count} change(s) refused: {}", reason.as_str()),
                );
                NodeEvent::Rejected {
                    workspace,
                    peer: peer.to_string(),
                    reason: reason.as_str().to_owned(),
                    count: count as u64,
                }
            }
            Event::Applied {
                peer,
                workspace,
                doc,
                changes,
                sent_ms,
            } => {
                let now = crate::now_ms();
                self.metrics
                    .propagation(now.saturating_sub(sent_ms) as f64 / 1000.0);
                tracing::debug!(%peer, %workspace, %doc, changes, "applied changes from a peer");
                self.metrics.changes_applied(changes as u64);
                self.audit_peer(
                    &peer,
                    "sync.write",
                    workspace,
                    true,
                    format!("{changes} signed change(s) within the author's rights"),
                );
                NodeEvent::Applied {
                    workspace,
                    peer: peer.to_string(),
                    changes: changes as u64,
                }
            }
            Event::SessionOpened { peer, workspace } => {
                tracing::info!(%peer, %workspace, "sync session open");
                self.audit_peer(
                    &peer,
                    "sync.open",
                    workspace,
                    true,
                    "capability token verified for this peer".into(),
                );
                session_event(workspace, &peer, SessionState::Opened, None)
            }
            Event::SessionRefused {
                peer,
                workspace,
                reason,
            } => {
                let member = self
                    .workspaces
                    .get(&workspace)
                    .is_some_and(|w| w.member_peers().contains(&peer.to_string()));
                if member {
                    tracing::warn!(%peer, %workspace, %reason, "sync session refused");
                    self.audit_peer(&peer, "sync.open", workspace, false, reason.clone());
                } else {
                    tracing::debug!(%peer, %workspace, %reason, "sync session refused to a stranger");
                    // A stranger can open sessions as fast as it can connect:
                    // tallied, not chained (see `refusals`).
                    let done = self
                        .refusals
                        .count(crate::now_ms(), "peer", "sync session refused");
                    self.write_refusals(&done);
                }
                session_event(workspace, &peer, SessionState::Refused, Some(reason))
            }
            Event::SessionClosed { peer, workspace } => {
                tracing::info!(%peer, %workspace, "sync session closed");
                session_event(workspace, &peer, SessionState::Closed, None)
            }
        };
        self.stats.publish(event);
    }

    /// Stages an audit entry for a decision about a peer.
    fn audit_peer(
        &mut self,
        peer: &PeerId,
        action: &str,
        workspace: WorkspaceId,
        allow: bool,
        reason: String,
    ) {
        self.metrics.audit_entry(allow);
        self.audit_staged.push(super::audit::Decision {
            at_ms: crate::now_ms(),
            who: format!("peer:{peer}"),
            action: action.to_owned(),
            workspace: Some(workspace),
            allow,
            reason,
        });
    }

    /// Hands a command to the network task without blocking the store.
    ///
    /// A session's frames form one ordered stream: once a frame to a peer is
    /// dropped (the network task is overwhelmed), every later frame to it is
    /// dropped too until the connection is closed, and the close is retried
    /// until the network task takes it; the sessions then start afresh when
    /// the peer reconnects.
    pub(super) fn send_net(&mut self, cmd: NetCommand) {
        let Some(net) = &self.net else { return };
        if let NetCommand::Send { peer, .. } = &cmd
            && self.net_overflow.contains(peer)
        {
            return;
        }
        match net.try_send(cmd) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(NetCommand::Send {
                peer, ..
            })) => {
                tracing::warn!(%peer, "network queue full; resetting the peer's sessions");
                self.net_overflow.insert(peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "network queue unavailable; a command was dropped")
            }
        }
    }

    /// Retries the disconnects of peers whose frames were dropped.
    pub(super) fn retry_overflow_disconnects(&mut self) {
        let Some(net) = &self.net else { return };
        let peers: Vec<PeerId> = self.net_overflow.iter().copied().collect();
        for peer in peers {
            let cmd = NetCommand::Disconnect {
                peer,
                reason: "frames to it were dropped".into(),
            };
            if net.try_send(cmd).is_err() {
                return;
            }
            // The engine closes its sessions when the connection is gone and
            // reopens them when the peer is back.
            self.net_overflow.remove(&peer);
        }
    }

    /// Addresses a peer was reached at or that an invitation named.
    fn known_addresses(&self, peer: &PeerId) -> Vec<String> {
        let mut addrs = self.peer_addrs.get(peer).cloned().unwrap_or_default();
        let name = peer.to_string();
        for m in self.memberships.values() {
            for (p, a) in &m.contacts {
                if *p == name {
                    addrs.extend(a.iter().cloned());
                }
            }
        }
        addrs.sort();
        addrs.dedup();
        addrs
    }

    fn my_role(&self, ws: &Workspace) -> Option<Role> {
        ws.effective_role(&self.author.peer_id, crate::now_ms())
    }

    pub(super) fn invite(
        &mut self,
        ws_id: WorkspaceId,
        request: InviteRequest,
        addrs: Vec<String>,
        now_ms: u64,
    ) -> Result<InviteResponse, StoreError> {
        let invitee: PeerId = request.peer_id.parse().map_err(|_| {
            StoreError::InvalidRequest(format!(
                "{:?} is not a peer id (ask the invitee for `xencode id`)",
                request.peer_id
            ))
        })?;
        let ws = self
            .workspaces
            .get(&ws_id)
            .ok_or(StoreError::WorkspaceNotFound(ws_id))?;
        let role = self.my_role(ws);
        if !role.is_some_and(|r| r.allows(Right::Invite)) {
            return Err(StoreError::Forbidden("only admins can invite".into()));
        }
        let root = root_key(ws, &self.memberships)
            .ok_or_else(|| StoreError::Forbidden("the workspace has not synced yet".into()))?;
        let nonce = ws
            .nonce()
            .ok_or_else(|| StoreError::Forbidden("the workspace has not synced yet".into()))?;
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
                .memberships
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
        .map_err(|e| StoreError::Forbidden(e.to_string()))?;
        let grant =
            capability::authorize(&token, &root, &ws_id, &invitee, &BTreeSet::new(), now_ms)
                .map_err(|e| {
                    StoreError::Storage(format!("a freshly minted token does not verify: {e}"))
                })?;
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
        let inv = Invitation::decode(token).map_err(StoreError::InvalidInvitation)?;
        let me = self.peer_id();
        // Verified by the handle before it asked (see `tokens`): a token not
        // verified yet is not verified here, on the store's thread.
        self.tokens
            .cached(&inv.root_key, &inv.token)
            .ok_or_else(|| {
                StoreError::InvalidInvitation("the invitation was not verified; try again".into())
            })?
            .and_then(|v| v.grant(&inv.workspace, &me, &BTreeSet::new(), now_ms))
            .map_err(|e| StoreError::InvalidInvitation(e.to_string()))?;
        let inviter: PeerId = inv
            .inviter
            .parse()
            .map_err(|_| StoreError::InvalidInvitation("the inviter is not a peer id".into()))?;
        if !self.workspaces.contains_key(&inv.workspace) {
            self.workspaces
                .insert(inv.workspace, Workspace::empty(inv.workspace, &self.author));
            self.new_workspaces.push(inv.workspace);
        }
        let mut contacts = self
            .memberships
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
            return Err(StoreError::Forbidden("only admins can revoke".into()));
        }
        let target = target.trim();
        if target.is_empty() || target.len() > 200 || target.chars().any(char::is_control) {
            return Err(StoreError::InvalidRequest(
                "give a member's peer id or a token id".into(),
            ));
        }
        let owner = ws.root_peer();
        let owner_token = owner.as_deref().and_then(|o| ws.member_token_id(o));
        if owner.as_deref() == Some(target) || owner_token.as_deref() == Some(target) {
            return Err(StoreError::Forbidden(
                "the workspace's creator cannot be revoked, by peer id or by token id".into(),
            ));
        }
        let is_member = ws.member_peers().iter().any(|p| p == target);
        let is_token = target.len() == 128 && target.chars().all(|c| c.is_ascii_hexdigit());
        if !is_member && !is_token {
            return Err(StoreError::InvalidRequest(format!(
                "{target:?} is neither a member of this workspace nor a token id"
            )));
        }
        let ws = self
            .workspaces
            .get_mut(&ws_id)
            .ok_or(StoreError::WorkspaceNotFound(ws_id))?;
        let changes = ws.revoke(target, &self.author, now_ms)?;
        self.stage_local(ws_id, changes);
        Ok(())
    }

    pub(super) fn peers(&mut self) -> Vec<PeerInfo> {
        let connected: BTreeSet<PeerId> = self.engine.connected_peers().into_iter().collect();
        let mut known: BTreeSet<PeerId> = connected.clone();
        for ws in self.workspaces.values() {
            known.extend(
                ws.member_peers()
                    .iter()
                    .filter_map(|p| p.parse::<PeerId>().ok()),
            );
        }
        let me = self.peer_id();
        known.remove(&me);
        let mut out = Vec::new();
        for peer in known {
            let mut workspaces = Vec::new();
            let ids: Vec<WorkspaceId> = self.workspaces.keys().copied().collect();
            for ws_id in ids {
                let syncing = self.engine.peers_of(&ws_id).contains(&peer);
                let member = self
                    .workspaces
                    .get(&ws_id)
                    .is_some_and(|w| w.member_peers().contains(&peer.to_string()));
                if !syncing && !member {
                    continue;
                }
                let behind = if syncing {
                    self.behind(&peer, &ws_id)
                } else {
                    None
                };
                workspaces.push(PeerWorkspace {
                    id: ws_id,
                    syncing,
                    behind,
                });
            }
            out.push(PeerInfo {
                peer_id: peer.to_string(),
                connected: connected.contains(&peer),
                addresses: self.peer_addrs.get(&peer).cloned().unwrap_or_default(),
                workspaces,
            });
        }
        out
    }

    /// How many of our changes the peer has not acknowledged, from its last
    /// advertised heads; `None` if it holds heads we do not know.
    fn behind(&mut self, peer: &PeerId, ws_id: &WorkspaceId) -> Option<u64> {
        let theirs = self.engine.their_heads(peer, ws_id);
        let ws = self.workspaces.get_mut(ws_id)?;
        let mut total = 0u64;
        let mut ahead = false;
        for doc in ws.docs_mut() {
            let mut their = theirs
                .iter()
                .find(|(d, _)| *d == doc.id)
                .map(|(_, h)| h.clone())
                .unwrap_or_default();
            let before = their.len();
            their.retain(|h| doc.am.get_change_meta_by_hash(h).is_some());
            ahead |= their.len() < before;
            total += doc.am.get_changes(&their).len() as u64;
        }
        // The peer holds changes this node has not seen, and lacks none of ours.
        if ahead && total == 0 {
            return None;
        }
        Some(total)
    }

    pub(super) fn contacts(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for m in self.memberships.values() {
            for (p, addrs) in &m.contacts {
                out.push((p.clone(), addrs.clone()));
            }
        }
        out
    }
}

fn session_event(
    workspace: WorkspaceId,
    peer: &PeerId,
    state: SessionState,
    reason: Option<String>,
) -> NodeEvent {
    NodeEvent::Session {
        workspace,
        peer: peer.to_string(),
        state,
        reason,
    }
}
