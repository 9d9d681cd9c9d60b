//! The store actor's sync driver: the sync engine over the loaded documents
//! (through [`HostView`]), signing and offering local changes, staging what
//! peers send, the network task's queue and its overflow, peers' addresses,
//! and what sessions tell the audit log and the event stream.

use std::collections::{BTreeMap, BTreeSet};

use automerge::{Change, ChangeHash};
use tokio::sync::mpsc;
use xencode_protocol::api::{Lag, NodeEvent, PeerInfo, PeerWorkspace, SessionState};
use xencode_protocol::envelope::SignedHead;
use xencode_protocol::policy::WriteRule;
use xencode_protocol::sync::{Engine, Event, Input, Limits, Output};
use xencode_protocol::wire::Frame;
use xencode_protocol::{DocId, PeerId, WorkspaceId};

use super::NetCommand;
use super::actor::Actor;
use super::host::HostView;
use super::persist::{Staged, StagedSnapshot};
use crate::workspace::NewChange;

/// The sync engine and what it talks to.
pub(super) struct SyncDriver {
    pub(super) engine: Engine,
    /// The network task's queue, once it is attached.
    pub(super) net: Option<mpsc::Sender<NetCommand>>,
    /// Addresses peers were reached at, for invitations and redials.
    pub(super) peer_addrs: BTreeMap<PeerId, Vec<String>>,
    /// Peers whose frames were dropped on a full network queue, to be
    /// disconnected (see `send_net`).
    pub(super) net_overflow: BTreeSet<PeerId>,
    /// Write decisions of the sync engine's host, kept across calls.
    pub(super) write_rule: WriteRule,
    /// Sessions refused to peers that are no members, tallied.
    pub(super) refusals: super::refusals::Refusals,
    /// What teammates have open in editors.
    pub(super) heard: super::presence::Heard,
}

impl SyncDriver {
    pub(super) fn new() -> Self {
        // Received changes are applied once per command group (the actor
        // calls `settle_engine` before it commits): Automerge's apply costs
        // time in proportion to the document per call.
        Self {
            engine: Engine::batched(Limits::default()),
            net: None,
            peer_addrs: BTreeMap::new(),
            net_overflow: BTreeSet::new(),
            write_rule: WriteRule::default(),
            refusals: Default::default(),
            heard: Default::default(),
        }
    }
}

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
                self.disk.epoch,
                &ws,
                &change.doc,
                change.change.hash().0,
            );
            self.disk.staged.push(Staged {
                ws,
                change,
                signatures: vec![sig],
                local: true,
            });
        }
    }

    /// Feeds the sync engine and carries out what it asks.
    pub(super) fn run_engine(&mut self, input: Input) {
        match &input {
            Input::Received { peer, frame } => trace_frame("in", peer, frame),
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

    /// Applies the changes the group's frames brought, one batch per
    /// document ([`xencode_protocol::sync::Engine::settle`]).
    pub(super) fn settle_engine(&mut self) {
        self.drive_engine(|engine, host, now| engine.settle(host, now));
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
        if self.disk.staged.iter().any(|s| s.local) {
            self.flush();
        }
        let now = crate::now_ms();
        let mut host = HostView {
            workspaces: &mut self.workspaces,
            memberships: &self.members.map,
            db: self.disk.db.as_ref(),
            author: &self.author,
            write_rule: &mut self.sync.write_rule,
            tokens: &self.members.tokens,
        };
        step(&mut self.sync.engine, &mut host, now);
        self.drain_engine();
    }

    fn drain_engine(&mut self) {
        let mut access_changed = false;
        while let Some(out) = self.sync.engine.poll_output() {
            match out {
                Output::Send { peer, frame } => {
                    trace_frame("out", &peer, &frame);
                    self.send_net(NetCommand::Send { peer, frame });
                }
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
                Output::Snapshot {
                    workspace,
                    doc,
                    saved,
                    signatures,
                } => {
                    access_changed |= doc == crate::workspace::access_doc_id(&workspace);
                    self.metrics.chunk_applied();
                    self.disk.staged_snapshots.push(StagedSnapshot {
                        ws: workspace,
                        doc,
                        saved,
                        signatures,
                    });
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
                    self.disk
                        .staged_sync_states
                        .push((peer.to_string(), doc, state));
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
            self.disk.staged.push(Staged {
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
                self.metrics.session_refused(reason.label());
                if member {
                    tracing::warn!(%peer, %workspace, %reason, "sync session refused");
                    self.audit_peer(&peer, "sync.open", workspace, false, reason.to_string());
                } else {
                    tracing::debug!(%peer, %workspace, %reason, "sync session refused to a stranger");
                    // A stranger can open sessions as fast as it can connect:
                    // tallied, not chained (see `refusals`).
                    let done = self
                        .sync
                        .refusals
                        .count(crate::now_ms(), "peer", reason.label());
                    self.write_refusals(&done);
                }
                session_event(
                    workspace,
                    &peer,
                    SessionState::Refused,
                    Some(reason.to_string()),
                )
            }
            Event::SessionClosed { peer, workspace } => {
                tracing::info!(%peer, %workspace, "sync session closed");
                self.presence_ended(peer, workspace);
                session_event(workspace, &peer, SessionState::Closed, None)
            }
            Event::Presence {
                peer,
                workspace,
                files,
            } => {
                self.heard_presence(peer, workspace, files);
                return;
            }
            Event::AddressCard { peer, card } => {
                self.heard_card(peer, card);
                return;
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
        self.disk.audit_staged.push(super::audit::Decision {
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
        let Some(net) = &self.sync.net else { return };
        if let NetCommand::Send { peer, .. } = &cmd
            && self.sync.net_overflow.contains(peer)
        {
            return;
        }
        match net.try_send(cmd) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(NetCommand::Send {
                peer, ..
            })) => {
                tracing::warn!(%peer, "network queue full; resetting the peer's sessions");
                self.sync.net_overflow.insert(peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "network queue unavailable; a command was dropped")
            }
        }
    }

    /// Retries the disconnects of peers whose frames were dropped.
    pub(super) fn retry_overflow_disconnects(&mut self) {
        let Some(net) = &self.sync.net else { return };
        let peers: Vec<PeerId> = self.sync.net_overflow.iter().copied().collect();
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
            self.sync.net_overflow.remove(&peer);
        }
    }

    /// Addresses a peer was reached at or that an invitation named.
    fn known_addresses(&self, peer: &PeerId) -> Vec<String> {
        let mut addrs = self.sync.peer_addrs.get(peer).cloned().unwrap_or_default();
        if let Some(card) = self.sync.engine.address_card(peer) {
            addrs.extend(card.addrs.iter().cloned());
        }
        let name = peer.to_string();
        for m in self.members.map.values() {
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

    pub(super) fn peers(&mut self) -> Vec<PeerInfo> {
        let connected: BTreeSet<PeerId> = self.sync.engine.connected_peers().into_iter().collect();
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
            // Where the peer's last sessions ended, read once per peer.
            let mut saved = None;
            let ids: Vec<WorkspaceId> = self.workspaces.keys().copied().collect();
            for ws_id in ids {
                let syncing = self.sync.engine.peers_of(&ws_id).contains(&peer);
                let member = self
                    .workspaces
                    .get(&ws_id)
                    .is_some_and(|w| w.member_peers().contains(&peer.to_string()));
                if !syncing && !member {
                    continue;
                }
                let (behind, lag) = if syncing {
                    match self.behind(&peer, &ws_id) {
                        Some(n) => (Some(n), Lag::Live),
                        None => (None, Lag::PeerAhead),
                    }
                } else {
                    let saved = saved.get_or_insert_with(|| {
                        self.disk
                            .sync_states_of(&peer.to_string())
                            .unwrap_or_else(|e| {
                                tracing::warn!(%peer, error = %e, "saved sync states unreadable");
                                Default::default()
                            })
                    });
                    match self
                        .workspaces
                        .get_mut(&ws_id)
                        .and_then(|w| last_known_behind(w, saved))
                    {
                        Some(n) => (Some(n), Lag::LastKnown),
                        None => (None, Lag::Unknown),
                    }
                };
                workspaces.push(PeerWorkspace {
                    id: ws_id,
                    syncing,
                    behind,
                    lag,
                });
            }
            out.push(PeerInfo {
                peer_id: peer.to_string(),
                connected: connected.contains(&peer),
                addresses: self.sync.peer_addrs.get(&peer).cloned().unwrap_or_default(),
                workspaces,
                name: self
                    .workspaces
                    .values()
                    .find_map(|w| w.access_doc().member_name(&peer.to_string())),
                clock_offset_ms: self.sync.engine.clock_offset(&peer),
                // The network's view, added by the API (`NetInfo`).
                connection: None,
                relay: None,
                rtt_us: None,
            });
        }
        out
    }

    /// How many of our changes the peer has not acknowledged, from its last
    /// advertised heads; `None` if it holds heads we do not know.
    fn behind(&mut self, peer: &PeerId, ws_id: &WorkspaceId) -> Option<u64> {
        let mut theirs: std::collections::HashMap<_, _> = self
            .sync
            .engine
            .their_heads(peer, ws_id)
            .into_iter()
            .collect();
        let ws = self.workspaces.get_mut(ws_id)?;
        let mut total = 0u64;
        let mut ahead = false;
        for (id, heads) in ws.all_heads() {
            let (lacks, unknown) = lacking(ws, id, heads, theirs.remove(&id).unwrap_or_default());
            ahead |= unknown;
            total += lacks;
        }
        // The peer holds changes this node has not seen, and lacks none of ours.
        if ahead && total == 0 {
            return None;
        }
        Some(total)
    }
}

/// How many of this workspace's changes a peer that is not syncing lacks,
/// counted from the heads its last session ended with (the saved sync
/// states); `None` if it never synced any of the workspace's documents.
/// A document it never synced counts whole.
fn last_known_behind(
    ws: &mut crate::workspace::Workspace,
    saved: &std::collections::HashMap<xencode_protocol::DocId, Vec<u8>>,
) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for (id, heads) in ws.all_heads() {
        let shared = match saved.get(&id) {
            Some(bytes) => match automerge::sync::State::decode(bytes) {
                Ok(state) => {
                    any = true;
                    state.shared_heads
                }
                Err(_) => Vec::new(),
            },
            None => Vec::new(),
        };
        total += lacking(ws, id, heads, shared).0;
    }
    any.then_some(total)
}

/// How many of `doc`'s changes a peer that has `known` lacks, and whether
/// `known` names changes this node does not have.
fn lacking(
    ws: &mut crate::workspace::Workspace,
    id: xencode_protocol::DocId,
    mut heads: Vec<automerge::ChangeHash>,
    mut known: Vec<automerge::ChangeHash>,
) -> (u64, bool) {
    heads.sort();
    known.sort();
    // In step: nothing to count, and a parked document stays parked.
    if heads == known {
        return (0, false);
    }
    let Some(doc) = ws.doc_mut(&id) else {
        return (0, false);
    };
    let before = known.len();
    known.retain(|h| doc.am.get_change_meta_by_hash(h).is_some());
    (
        doc.am.get_changes(&known).len() as u64,
        known.len() < before,
    )
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

/// Logs a frame at trace level (`RUST_LOG=xencode_node::store=trace`):
/// which document, how many changes, whether it carries the sync message.
fn trace_frame(direction: &str, peer: &PeerId, frame: &Frame) {
    if !tracing::enabled!(tracing::Level::TRACE) {
        return;
    }
    match frame {
        Frame::Sync {
            doc,
            message,
            changes,
            signatures,
            ..
        } => {
            let short = |h: &ChangeHash| hex::encode(&h.0[..4]);
            let changes: Vec<String> = changes
                .iter()
                .filter_map(|raw| Change::from_bytes(raw.clone()).ok())
                .map(|c| {
                    let deps: Vec<String> = c.deps().iter().map(short).collect();
                    format!("{}<-[{}]", short(&c.hash()), deps.join(","))
                })
                .collect();
            let message = message
                .as_ref()
                .and_then(|m| automerge::sync::Message::decode(m).ok())
                .map(|m| {
                    let heads: Vec<String> = m.heads.iter().map(short).collect();
                    let need: Vec<String> = m.need.iter().map(short).collect();
                    format!(
                        "heads [{}] need [{}] have {}",
                        heads.join(","),
                        need.join(","),
                        m.have.len()
                    )
                });
            tracing::trace!(
                direction,
                %peer,
                %doc,
                changes = ?changes,
                signatures = signatures.len(),
                message = ?message,
                "sync frame"
            )
        }
        Frame::Open { workspace, .. } => tracing::trace!(direction, %peer, %workspace, "open"),
        Frame::Accept { workspace, .. } => tracing::trace!(direction, %peer, %workspace, "accept"),
        Frame::Refuse { workspace, reason } => {
            tracing::trace!(direction, %peer, %workspace, %reason, "refuse")
        }
        Frame::Close { workspace } => tracing::trace!(direction, %peer, %workspace, "close"),
        Frame::Presence { files, .. } => {
            tracing::trace!(direction, %peer, files = files.len(), "presence")
        }
        Frame::Addresses { cards, .. } => {
            tracing::trace!(direction, %peer, cards = cards.len(), "address cards")
        }
        Frame::Chunk {
            doc,
            chunk,
            signatures,
            ..
        } => tracing::trace!(
            direction,
            %peer,
            %doc,
            bytes = chunk.len(),
            signatures = signatures.len(),
            "document chunk"
        ),
    }
}
