//! The sans-IO sync engine: which frames to send to which peer, which
//! received changes to apply, what to persist.
//!
//! It holds no sockets, reads no clock and draws no randomness. The driver
//! (the node's network task, or the simulator) feeds it [`Input`]s with the
//! current time and then drains [`Output`]s until there are none:
//!
//! ```ignore
//! engine.handle(&mut host, Input::Connected { peer }, now_ms);
//! while let Some(output) = engine.poll_output() {
//!     match output {
//!         Output::Send { peer, frame } => network.send(peer, wire::encode(&frame)?),
//!         Output::Persist { workspace, doc, changes, signatures } => store.persist(..),
//!         Output::SaveSyncState { .. } => store.save_sync_state(..),
//!         Output::Disconnect { peer, .. } => network.disconnect(peer),
//!         Output::Event(e) => metrics.record(e),
//!     }
//! }
//! ```
//!
//! Contract: after every `handle`, drain `poll_output` until it returns
//! `None`. Documents are reached through the [`Host`] trait, which the driver
//! implements over its own storage; the engine applies changes to them and
//! reports each applied batch as [`Output::Persist`], which the driver must
//! make durable before it relies on them.
//!
//! Sessions: a session is one (peer, workspace). Each side proves membership
//! with a token (`Open` / `Accept`), which the host checks against the peer's
//! authenticated id; nothing about a workspace is sent before the peer is
//! admitted. Inside a session every document of the workspace runs
//! Automerge's sync protocol for have/need only: the changes travel as raw
//! changes beside the sync message, with the authors' [`SignedHead`]s, so the
//! receiver can check each change before Automerge sees it.
//!
//! Receiving: changes go to a bounded pending buffer per document. A change is
//! applied only once (1) a valid signature of its author covers it (the signed
//! head is the change or one of its descendants, found by walking hashes), (2)
//! its actor is the signing author's, (3) the host says the author may write,
//! (4) all its dependencies are present and its sequence number is the next of
//! its actor. Refused changes are reported and never applied, so never
//! relayed: the engine only ever sends changes from the documents themselves.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::sync;
use automerge::{ActorId, AutoCommit, Change, ChangeHash};
use libp2p_identity::PeerId;

use crate::card::AddressCard;
use crate::envelope::SignedHead;
use crate::ids::{DocId, WorkspaceId};
use crate::policy::AdmitError;
use crate::wire::{Frame, MAX_REASON_BYTES, OpenFile};

/// Bounds of the engine.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of received changes waiting for a signature or dependencies,
    /// counted inflated; also the most one change may inflate to (a larger
    /// one is refused as malformed before Automerge decodes it).
    pub max_pending_bytes: usize,
    /// Pending changes older than this are dropped, in milliseconds.
    pub pending_ttl_ms: u64,
    /// Protocol violations (bad signatures, malformed frames) before a peer
    /// is disconnected.
    pub max_strikes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_pending_bytes: 64 * 1024 * 1024,
            pending_ttl_ms: 5 * 60 * 1000,
            max_strikes: 3,
        }
    }
}

/// What an admitted peer may do in a workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub read: bool,
    pub write: bool,
}

/// The engine's view of the node: documents, signatures, tokens, policy.
pub trait Host {
    /// Documents of `ws` held here, in a stable order (empty if the workspace
    /// is not held).
    fn documents(&self, ws: &WorkspaceId) -> Vec<DocId>;
    /// A document of a held workspace, created empty if it is not here yet;
    /// `None` if the workspace is not held or the host will not create more.
    fn document(&mut self, ws: &WorkspaceId, doc: &DocId) -> Option<&mut AutoCommit>;
    /// Whether `doc` of `ws` is held here already (without creating it).
    fn has_document(&self, ws: &WorkspaceId, doc: &DocId) -> bool {
        self.documents(ws).contains(doc)
    }
    /// The heads of a held document, without creating it (`None` if it is
    /// not held). A host that keeps idle documents unloaded answers this
    /// without loading them.
    fn heads(&mut self, ws: &WorkspaceId, doc: &DocId) -> Option<Vec<ChangeHash>> {
        if !self.has_document(ws, doc) {
            return None;
        }
        self.document(ws, doc).map(|am| am.get_heads())
    }
    /// Whether a change to `doc` can name documents `ws` did not hold (the
    /// index): after a peer changes it, sessions look for new documents.
    /// Every other change costs the engine only the document it touched.
    fn names_documents(&self, _ws: &WorkspaceId, _doc: &DocId) -> bool {
        true
    }
    /// The stored author signature of a change, if any.
    fn signature(&self, ws: &WorkspaceId, doc: &DocId, hash: &ChangeHash) -> Option<SignedHead>;
    /// This node's own token for `ws`, presented to peers.
    fn token(&self, ws: &WorkspaceId) -> Option<Vec<u8>>;
    /// Workspaces to open sessions for when `peer` connects.
    fn workspaces_for(&self, peer: &PeerId) -> Vec<WorkspaceId>;
    /// Checks a peer's token for `ws` at `now_ms`: what the peer may do, or
    /// why not (for this node's own log and audit: the peer is only ever
    /// told [`REFUSED`]).
    fn admit(
        &mut self,
        peer: &PeerId,
        ws: &WorkspaceId,
        token: &[u8],
        now_ms: u64,
    ) -> Result<Access, AdmitError>;
    /// Whether `change`, by `author` (whose signature covers it), is accepted
    /// into `doc`. Must be a function of the change and its causal history
    /// only — the same answer on every node, whenever it is asked — or nodes
    /// diverge for good. `Unknown` (the history the decision rests on is not
    /// all here yet) keeps the change pending until it is, or it expires.
    fn may_write(
        &mut self,
        ws: &WorkspaceId,
        doc: &DocId,
        author: &[u8; 32],
        change: crate::policy::Written<'_>,
    ) -> WriteDecision;
    /// A saved Automerge sync state for (peer, doc).
    fn sync_state(&self, peer: &PeerId, doc: &DocId) -> Option<Vec<u8>>;
}

/// All a peer is told when its session is refused, whatever the reason.
pub const REFUSED: &str = "not authorized";

/// The host's answer on whether an author may write a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteDecision {
    Allow,
    Deny,
    Unknown,
}

/// What happens to the engine.
#[derive(Debug, Clone)]
pub enum Input {
    /// A connection to `peer` (its id authenticated by the transport) is up.
    Connected { peer: PeerId },
    /// The last connection to `peer` is gone.
    Disconnected { peer: PeerId },
    /// A frame arrived from `peer`.
    Received { peer: PeerId, frame: Frame },
    /// Bytes from `peer` that did not decode as a frame.
    Malformed { peer: PeerId, error: String },
    /// This node changed `doc` (already committed and signed) with
    /// `changes`. Giving them spares the engine rebuilding each one from
    /// the document when it sends it (Automerge 0.12 rebuilds a change from
    /// its operations: as costly as making it); empty, it rebuilds them.
    LocalChange {
        workspace: WorkspaceId,
        doc: DocId,
        changes: Vec<Change>,
    },
    /// Open a session for `workspace` with `peer` even if the host does not
    /// list it (joining with an invitation).
    Join {
        peer: PeerId,
        workspace: WorkspaceId,
    },
    /// `peer` (the gossip message's authenticated source) announced that
    /// its copy of `workspace` now has heads with this digest.
    Announced {
        peer: PeerId,
        workspace: WorkspaceId,
        digest: [u8; 16],
    },
    /// This node has these files of `workspace` open in editors (all of
    /// them; empty when none): its members with a session hear it.
    Presence {
        workspace: WorkspaceId,
        files: Vec<OpenFile>,
    },
    /// This node's own address card, newly signed (its addresses changed,
    /// or the card grew old): every member with a session hears it, and
    /// every session that opens later.
    OwnAddresses { card: AddressCard },
    /// Members' cards kept from before (the host's store), held and told to
    /// sessions that open, not passed on now.
    KnownAddresses { cards: Vec<AddressCard> },
    /// Time passed.
    Tick,
}

/// What the driver must do.
#[derive(Debug, Clone)]
pub enum Output {
    Send {
        peer: PeerId,
        frame: Frame,
    },
    /// Changes applied to `doc`: make them durable, with the signatures.
    Persist {
        workspace: WorkspaceId,
        doc: DocId,
        changes: Vec<Vec<u8>>,
        signatures: Vec<SignedHead>,
    },
    /// `doc` was replaced by the document in `saved` (a checked catch-up
    /// chunk holding everything it held and more): keep `saved` as its
    /// snapshot in place of what was stored, with the signatures.
    Snapshot {
        workspace: WorkspaceId,
        doc: DocId,
        saved: Vec<u8>,
        signatures: Vec<SignedHead>,
    },
    /// An Automerge sync state to keep for the next session with `peer`.
    SaveSyncState {
        peer: PeerId,
        doc: DocId,
        state: Vec<u8>,
    },
    Disconnect {
        peer: PeerId,
        reason: String,
    },
    /// Publish this digest of the workspace's heads on its gossip topic.
    Announce {
        workspace: WorkspaceId,
        digest: [u8; 16],
    },
    /// Connect to `peer`: it has changes to a shared workspace and no session
    /// with this node is open.
    Dial {
        peer: PeerId,
    },
    Event(Event),
}

/// Why received changes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RejectReason {
    /// A signature did not verify.
    BadSignature,
    /// The author may not write this document.
    Unauthorized,
    /// Undecodable, a skipped sequence number, or refused by Automerge.
    Malformed,
    /// Never covered by a signature, or dependencies never arrived.
    Expired,
    /// The pending buffer was full.
    Overflow,
    /// Changes inside an Automerge sync message, where Automerge would apply
    /// them unchecked: the whole frame is refused.
    InSyncMessage,
    /// Sync for a document the node does not hold, from a peer that may not
    /// write (it could only ever bring an empty document).
    UnknownDocument,
}

impl RejectReason {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadSignature => "bad_signature",
            RejectReason::Unauthorized => "unauthorized",
            RejectReason::Malformed => "malformed",
            RejectReason::Expired => "expired",
            RejectReason::Overflow => "overflow",
            RejectReason::InSyncMessage => "changes_in_sync_message",
            RejectReason::UnknownDocument => "unknown_document",
        }
    }
}

/// Why a session was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRefusal {
    /// This node refused the peer (the peer was told only [`REFUSED`]).
    ByUs(AdmitError),
    /// The peer refused this node, saying this (bounded).
    ByPeer(String),
}

impl SessionRefusal {
    /// A fixed name for the kind of refusal (a metric label).
    pub fn label(&self) -> &'static str {
        match self {
            SessionRefusal::ByUs(e) => e.label(),
            SessionRefusal::ByPeer(_) => "refused_by_peer",
        }
    }
}

impl std::fmt::Display for SessionRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionRefusal::ByUs(e) => write!(f, "{e}"),
            SessionRefusal::ByPeer(r) => write!(f, "refused by the peer: {r}"),
        }
    }
}

/// Observable happenings, for logs, metrics and the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    SessionOpened {
        peer: PeerId,
        workspace: WorkspaceId,
    },
    SessionRefused {
        peer: PeerId,
        workspace: WorkspaceId,
        reason: SessionRefusal,
    },
    SessionClosed {
        peer: PeerId,
        workspace: WorkspaceId,
    },
    Applied {
        peer: PeerId,
        workspace: WorkspaceId,
        doc: DocId,
        changes: usize,
        /// When the peer sent the oldest of these changes (its clock): the
        /// host measures propagation latency from it.
        sent_ms: u64,
    },
    Rejected {
        peer: PeerId,
        workspace: WorkspaceId,
        reason: RejectReason,
        count: usize,
    },
    /// An admitted peer has these files of the workspace open (all of
    /// them: it replaces what the peer said before). Its word ends with
    /// [`Event::SessionClosed`].
    Presence {
        peer: PeerId,
        workspace: WorkspaceId,
        files: Vec<OpenFile>,
    },
    /// A verified card of `peer`, a member, newer than any held before:
    /// where to dial it now. The host keeps it for after a restart.
    AddressCard { peer: PeerId, card: AddressCard },
}

#[derive(Debug, Clone, Default)]
struct Session {
    /// What we admitted the peer to (after checking its token).
    admitted: Option<Access>,
    /// The token the peer presented, re-checked by [`Engine::revalidate`].
    token: Vec<u8>,
    /// We sent `Open` and wait for `Accept`.
    opening: bool,
    /// When the session was admitted (ms): a document born after it the
    /// peer cannot have yet (see `send::born_after`).
    admitted_ms: u64,
    docs: BTreeMap<DocId, DocSync>,
}

#[derive(Debug, Clone)]
struct DocSync {
    state: sync::State,
    /// The last change-less message we sent: sending it again would only
    /// keep two peers bouncing the same empty messages.
    idle: Option<Vec<u8>>,
}

#[derive(Debug, Clone)]
struct PendingChange {
    change: Change,
    raw: Vec<u8>,
    /// Its size in memory (inflated), counted in `pending_bytes`.
    size: usize,
    actor: ActorId,
    /// The author whose signature covers this change.
    verified: Option<[u8; 32]>,
    from: PeerId,
    since_ms: u64,
    /// When the peer sent it, by the peer's clock.
    sent_ms: u64,
}

/// The content of a received `Sync` frame.
#[derive(Debug)]
struct Received {
    message: Option<Vec<u8>>,
    changes: Vec<Vec<u8>>,
    signatures: Vec<SignedHead>,
    sent_ms: u64,
}

#[derive(Debug, Clone, Default)]
struct Pending {
    changes: BTreeMap<ChangeHash, PendingChange>,
    /// Verified signatures whose change has not arrived yet.
    signatures: Vec<(SignedHead, PeerId)>,
    /// Signatures that covered pending changes, kept until their head is
    /// applied and they can be persisted (to vouch for the change when it is
    /// relayed).
    covering: BTreeMap<ChangeHash, SignedHead>,
}

/// The sync engine of one node.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    limits: Limits,
    connected: BTreeSet<PeerId>,
    sessions: BTreeMap<(PeerId, WorkspaceId), Session>,
    pending: BTreeMap<(WorkspaceId, DocId), Pending>,
    pending_bytes: usize,
    /// Highest sequence number applied per actor, per document (lazily built).
    seqs: BTreeMap<DocId, BTreeMap<ActorId, u64>>,
    strikes: BTreeMap<PeerId, u32>,
    outputs: VecDeque<Output>,
    /// Signatures of changes applied recently, until the host has surely
    /// persisted them: a change relayed right after it was applied must
    /// travel with the signature that vouches for it.
    recent_signatures: BTreeMap<(DocId, ChangeHash), SignedHead>,
    /// Changes made here recently, as [`Input::LocalChange`] gave them, and
    /// their bytes: sent from here instead of rebuilt from the document.
    recent_local: BTreeMap<(DocId, ChangeHash), Change>,
    recent_local_bytes: usize,
    /// Workspaces changed here since the last announcement.
    unannounced: BTreeSet<WorkspaceId>,
    /// When each peer was last asked to be dialed, after an announcement.
    dialed: BTreeMap<PeerId, u64>,
    /// Announcements heard while sessions of the workspace were open: the
    /// mesh is expected to bring those changes; the announcer is dialed only
    /// if it has not after [`MESH_PULL_MS`]. By (announcer, workspace): when
    /// first heard, and the digest announced last.
    pulls: BTreeMap<(PeerId, WorkspaceId), (u64, [u8; 16])>,
    /// When a change by each member (its signing key's peer id) was last
    /// applied here.
    authored: BTreeMap<PeerId, u64>,
    /// Changes applied here from a peer in the last [`RELAY_LAZY_MS`]:
    /// other peers hear of them first (our heads) and get them when they ask
    /// (`send.rs`, "lazy relaying").
    relayed: BTreeMap<(DocId, ChangeHash), u64>,
    /// Heads a sync message of ours asked a peer for, and when: another
    /// peer is not asked for them again until [`RELAY_LAZY_MS`] passed.
    asked: BTreeMap<(DocId, ChangeHash), (PeerId, u64)>,
    /// Sync messages that held changes back, due again (in full) at this
    /// time if the peer has not had them meanwhile.
    follow_ups: BTreeMap<(PeerId, WorkspaceId, DocId), u64>,
    /// Set while a follow-up is generated: nothing is held back.
    eager: bool,
    /// The time of the input being handled, stamped on frames sent.
    now_ms: u64,
    /// What this node has open in editors, per workspace (never empty).
    presence: BTreeMap<WorkspaceId, Vec<OpenFile>>,
    /// This node's own address card.
    own_card: Option<AddressCard>,
    /// Members' latest address cards.
    cards: BTreeMap<PeerId, AddressCard>,
    /// Per peer, our clock minus the peer's as its recent frames showed it
    /// (`now - sent_ms`, the one-way delay included): see
    /// [`Engine::clock_offset`].
    clocks: BTreeMap<PeerId, ClockSamples>,
    /// Each workspace's heads digest, kept as its documents change.
    digests: Digests,
    /// Whether received changes wait for [`Engine::settle`].
    batch_applies: bool,
    /// Documents with received changes to apply at [`Engine::settle`], and
    /// the peers owed a sync message once they are.
    deferred: BTreeMap<(WorkspaceId, DocId), BTreeSet<PeerId>>,
}

/// The last few clock readings of one peer.
#[derive(Debug, Clone, Default)]
struct ClockSamples {
    deltas: VecDeque<i64>,
}

/// Readings kept per peer: the smallest of them is the estimate (the one
/// that waited least in queues).
const CLOCK_SAMPLES: usize = 16;

/// Peers whose clocks are tracked at most.
const MAX_CLOCK_PEERS: usize = 4096;

/// Least time between two dials of one peer prompted by its announcements.
const REDIAL_AFTER_ANNOUNCE_MS: u64 = 10_000;

/// How long changes announced by a member are left to come through the
/// open sessions (the mesh) before this node dials the member itself.
const MESH_PULL_MS: u64 = 2_000;

/// How long a change received from a peer is passed on lazily: peers are
/// told our heads and sent it when they ask, so a change that floods the
/// mesh reaches each member about once instead of from every neighbour
/// (each of which would otherwise push it before hearing the member has it).
/// After this, whatever a peer still lacks is sent without being asked.
const RELAY_LAZY_MS: u64 = 500;

/// Recently relayed changes and asked-for heads kept, at most.
const MAX_RELAYED: usize = 65_536;

/// Announcements waiting for the mesh, and authors remembered, at most.
const MAX_PULLS: usize = 4096;

/// Passes over a workspace's pending documents after one frame.
const MAX_RESOLVE_ROUNDS: usize = 8;

/// Recent signatures kept in memory before the cache is cleared.
const MAX_RECENT_SIGNATURES: usize = 65_536;

/// Recent local changes kept (count, bytes) before that cache is cleared.
const MAX_RECENT_LOCAL: usize = 4096;
const MAX_RECENT_LOCAL_BYTES: usize = 16 << 20;

mod addresses;
mod presence;
mod receive;
mod send;

/// A digest of a workspace's documents and their heads, as announced on its
/// gossip topic: equal digests mean equal heads. The XOR of one keyed hash
/// per document that has changes ([`doc_digest`]), so the engine keeps it as
/// documents change ([`Digests`]) instead of walking them all for every
/// announcement it sends or hears. This computes it from scratch.
pub fn digest(host: &mut impl Host, ws: &WorkspaceId) -> [u8; 16] {
    Digests::default().get(host, ws)
}

/// One document's share of [`digest`]: zero for a document without
/// changes (one a host created empty counts as absent).
fn doc_digest(host: &mut impl Host, ws: &WorkspaceId, doc: &DocId) -> [u8; 16] {
    let mut out = [0u8; 16];
    let Some(mut heads) = host.heads(ws, doc) else {
        return out;
    };
    if heads.is_empty() {
        return out;
    }
    heads.sort();
    let mut h = blake3::Hasher::new_derive_key("xencode 2026 heads digest v2");
    h.update(ws.as_bytes());
    h.update(doc.as_bytes());
    h.update(&(heads.len() as u64).to_le_bytes());
    for head in heads {
        h.update(&head.0);
    }
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

fn xor(into: &mut [u8; 16], other: &[u8; 16]) {
    for (a, b) in into.iter_mut().zip(other) {
        *a ^= b;
    }
}

/// [`digest`] of each workspace, kept up to date by the changes the engine
/// sees (its own applies and the host's local changes): a change costs one
/// document's hash, whatever the workspace holds.
#[derive(Debug, Clone, Default)]
struct Digests {
    by_ws: BTreeMap<WorkspaceId, WorkspaceDigest>,
}

#[derive(Debug, Clone, Default)]
struct WorkspaceDigest {
    docs: HashMap<DocId, [u8; 16]>,
    sum: [u8; 16],
}

impl WorkspaceDigest {
    fn set(&mut self, doc: DocId, one: [u8; 16]) {
        let old = self.docs.insert(doc, one).unwrap_or_default();
        xor(&mut self.sum, &old);
        xor(&mut self.sum, &one);
    }
}

impl Digests {
    fn get(&mut self, host: &mut impl Host, ws: &WorkspaceId) -> [u8; 16] {
        if let Some(d) = self.by_ws.get(ws) {
            return d.sum;
        }
        let mut d = WorkspaceDigest::default();
        for doc in host.documents(ws) {
            let one = doc_digest(host, ws, &doc);
            d.set(doc, one);
        }
        let sum = d.sum;
        // Announcements may name workspaces not held here: nothing kept for
        // them, so they cannot grow the map.
        if !d.docs.is_empty() {
            self.by_ws.insert(*ws, d);
        }
        sum
    }

    fn changed(&mut self, host: &mut impl Host, ws: &WorkspaceId, doc: &DocId) {
        let Some(d) = self.by_ws.get_mut(ws) else {
            return;
        };
        d.set(*doc, doc_digest(host, ws, doc));
    }

    fn forget(&mut self, ws: &WorkspaceId) {
        self.by_ws.remove(ws);
    }

    /// `ws` is not held here (the host lists no document of it): nothing
    /// to compare. A workspace joined but not synced yet is held.
    fn holds_nothing(&self, ws: &WorkspaceId) -> bool {
        self.by_ws.get(ws).is_none_or(|d| d.docs.is_empty())
    }
}

impl Engine {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// An engine as the node runs it, with [`Engine::set_batch_applies`]
    /// on: the node, its fuzz harness and the simulator all make it here.
    pub fn batched(limits: Limits) -> Self {
        let mut engine = Self::new(limits);
        engine.set_batch_applies(true);
        engine
    }

    /// The next thing the driver must do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// How far ahead of `peer`'s clock this node's clock is, in ms, as its
    /// recent frames show (negative: behind); `None` before any frame of an
    /// admitted session. An upper bound by the one-way delay: the smallest
    /// of the last few `now - sent_ms` readings.
    pub fn clock_offset(&self, peer: &PeerId) -> Option<i64> {
        self.clocks
            .get(peer)?
            .deltas
            .iter()
            .copied()
            .min_by_key(|d| d.unsigned_abs())
    }

    /// Records a frame's send time (only admitted peers', so the map is
    /// bounded by the members; and by [`MAX_CLOCK_PEERS`] on top).
    fn clock_reading(&mut self, peer: PeerId, sent_ms: u64, now_ms: u64) {
        if sent_ms == 0
            || (self.clocks.len() >= MAX_CLOCK_PEERS && !self.clocks.contains_key(&peer))
        {
            return;
        }
        let delta = i64::try_from(now_ms)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(sent_ms).unwrap_or(i64::MAX));
        let samples = self.clocks.entry(peer).or_default();
        if samples.deltas.len() == CLOCK_SAMPLES {
            samples.deltas.pop_front();
        }
        samples.deltas.push_back(delta);
    }

    /// Peers with an open session (admitted by us) for `ws`.
    pub fn peers_of(&self, ws: &WorkspaceId) -> Vec<PeerId> {
        self.sessions
            .iter()
            .filter(|((_, w), s)| w == ws && s.admitted.is_some())
            .map(|((p, _), _)| *p)
            .collect()
    }

    /// Per admitted session and document: the hashes the peer is known to
    /// have (its last advertised heads and the heads both sides share), to
    /// tell how far behind it is.
    pub fn their_heads(&self, peer: &PeerId, ws: &WorkspaceId) -> Vec<(DocId, Vec<ChangeHash>)> {
        let Some(s) = self.sessions.get(&(*peer, *ws)) else {
            return Vec::new();
        };
        s.docs
            .iter()
            .map(|(d, ds)| {
                let mut known = ds.state.shared_heads.clone();
                known.extend(ds.state.their_heads.iter().flatten().copied());
                known.sort();
                known.dedup();
                (*d, known)
            })
            .collect()
    }

    /// Peers with a live connection.
    pub fn connected_peers(&self) -> Vec<PeerId> {
        self.connected.iter().copied().collect()
    }

    /// Re-checks every admitted session's token (revocations, expiry) and
    /// closes those that no longer pass, telling the peer.
    pub fn revalidate(&mut self, host: &mut impl Host, now_ms: u64) {
        self.now_ms = now_ms;
        let sessions: Vec<((PeerId, WorkspaceId), Vec<u8>)> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.admitted.is_some())
            .map(|(k, s)| (*k, s.token.clone()))
            .collect();
        for ((peer, ws), token) in sessions {
            if let Err(why) = host.admit(&peer, &ws, &token, now_ms) {
                // What lazy relaying held back goes first: the change that
                // ends the session (a revocation) among it, so the peer
                // learns why.
                let held: Vec<DocId> = self
                    .follow_ups
                    .keys()
                    .filter(|(p, w, _)| *p == peer && *w == ws)
                    .map(|(_, _, d)| *d)
                    .collect();
                for doc in held {
                    self.follow_ups.remove(&(peer, ws, doc));
                    self.generate_in_full(host, peer, ws, doc);
                }
                // Keep the sync states, then refuse as on any failed admission.
                self.close_session((peer, ws));
                self.refuse(peer, ws, why);
            }
        }
    }

    /// Applies received changes only at [`Engine::settle`], not as each
    /// frame arrives. Automerge 0.12 applies a batch of changes in time that
    /// grows with the document, whatever the batch holds (the 260,000-op
    /// automerge-paper document: about 90 ms for one change or a hundred),
    /// so a driver that handles frames in groups should apply each document
    /// once per group: it turns this on and calls `settle` at the end of
    /// every group, before it commits. Off by default: every frame is
    /// applied as it is handled.
    pub fn set_batch_applies(&mut self, on: bool) {
        self.batch_applies = on;
    }

    /// Applies what the frames handled since the last call brought, one
    /// batch per document, and answers the peers whose sync messages wait
    /// for it. Nothing to do unless [`Engine::set_batch_applies`] is on.
    pub fn settle(&mut self, host: &mut impl Host, now_ms: u64) {
        self.now_ms = now_ms;
        // Everything is applied before anyone is answered: a document whose
        // changes wait for another's (the access heads they cite) would
        // otherwise answer with its old heads — to a new member, empty
        // heads, which Automerge reads as a peer that lost everything, and
        // the sender sends the whole document again.
        let deferred = std::mem::take(&mut self.deferred);
        for (ws, doc) in deferred.keys() {
            self.resolve(host, *ws, *doc);
        }
        for ((ws, doc), owed) in deferred {
            for peer in owed {
                self.generate(host, peer, ws, doc);
            }
        }
    }

    /// The host changed a workspace's documents outside the engine (removed
    /// the workspace, restored it from a backup): its digest is computed
    /// again when next needed.
    pub fn forget_digest(&mut self, ws: &WorkspaceId) {
        self.digests.forget(ws);
    }

    /// Bytes held in the pending buffer.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// Documents with an entry in the pending buffer (changes or signatures
    /// waiting).
    pub fn pending_documents(&self) -> usize {
        self.pending.len()
    }

    /// Feeds one input.
    pub fn handle(&mut self, host: &mut impl Host, input: Input, now_ms: u64) {
        self.now_ms = now_ms;
        match input {
            Input::Connected { peer } => {
                self.connected.insert(peer);
                for ws in host.workspaces_for(&peer) {
                    self.open(host, peer, ws);
                }
            }
            Input::Disconnected { peer } => {
                self.connected.remove(&peer);
                let keys: Vec<_> = self
                    .sessions
                    .keys()
                    .filter(|(p, _)| *p == peer)
                    .copied()
                    .collect();
                for key in keys {
                    self.close_session(key);
                }
                self.strikes.remove(&peer);
            }
            Input::Join { peer, workspace } => {
                self.digests.forget(&workspace);
                if self.connected.contains(&peer) {
                    self.open(host, peer, workspace);
                }
            }
            Input::Received { peer, frame } => self.received(host, peer, frame, now_ms),
            Input::Malformed { peer, error } => {
                self.strike(peer, &format!("malformed frame: {error}"));
            }
            Input::LocalChange {
                workspace,
                doc,
                changes,
            } => {
                self.keep_local(doc, changes);
                self.unannounced.insert(workspace);
                self.changed(host, &workspace, &doc, None);
            }
            Input::Announced {
                peer,
                workspace,
                digest,
            } => self.announced(host, peer, workspace, digest, now_ms),
            Input::Presence { workspace, files } => self.local_presence(workspace, files),
            Input::OwnAddresses { card } => self.own_card(card),
            Input::KnownAddresses { cards } => self.known_cards(cards, now_ms),
            Input::Tick => {
                self.settle(host, now_ms);
                self.expire(host, now_ms);
                self.overdue_pulls(host, now_ms);
                self.follow_up(host, now_ms);
                self.revalidate(host, now_ms);
                // Announce at most once per tick per workspace, however many
                // local changes there were.
                for workspace in std::mem::take(&mut self.unannounced) {
                    let digest = self.digests.get(host, &workspace);
                    self.outputs
                        .push_back(Output::Announce { workspace, digest });
                }
            }
        }
    }

    /// Decides whom to pull from: a member announcing heads unlike ours that
    /// has no open session with us gets a session (if connected) or a dial.
    fn announced(
        &mut self,
        host: &mut impl Host,
        peer: PeerId,
        ws: WorkspaceId,
        theirs: [u8; 16],
        now_ms: u64,
    ) {
        let mine = self.digests.get(host, &ws);
        if self.digests.holds_nothing(&ws) || mine == theirs {
            return;
        }
        if self
            .sessions
            .get(&(peer, ws))
            .is_some_and(|s| s.admitted.is_some() || s.opening)
        {
            // The session pushes the changes; they are on their way.
            return;
        }
        if !host.workspaces_for(&peer).contains(&ws) {
            return;
        }
        // Dialing every announcer makes each writer a hub every member
        // holds a session with. A node with sessions in the workspace gets
        // the changes through them (each session passes on whatever its
        // peer lacks); it pulls from the announcer only if they do not come.
        if !self.connected.contains(&peer) && !self.peers_of(&ws).is_empty() {
            if self.pulls.len() < MAX_PULLS || self.pulls.contains_key(&(peer, ws)) {
                let at = self.pulls.get(&(peer, ws)).map_or(now_ms, |p| p.0);
                self.pulls.insert((peer, ws), (at, theirs));
            }
            return;
        }
        self.pull_from(host, peer, ws, now_ms);
    }

    /// Opens a session with `peer` for `ws`, or dials it.
    fn pull_from(&mut self, host: &mut impl Host, peer: PeerId, ws: WorkspaceId, now_ms: u64) {
        if self.connected.contains(&peer) {
            self.open(host, peer, ws);
            return;
        }
        let last = self.dialed.get(&peer).copied();
        if last.is_none_or(|t| now_ms.saturating_sub(t) >= REDIAL_AFTER_ANNOUNCE_MS) {
            self.dialed.insert(peer, now_ms);
            self.outputs.push_back(Output::Dial { peer });
        }
    }

    /// Announcements the mesh did not answer in [`MESH_PULL_MS`]: unless a
    /// change by the announcer was applied here since (or just before: the
    /// sessions can outrun the gossip) or the heads are now equal, the
    /// announcer is pulled from directly.
    fn overdue_pulls(&mut self, host: &mut impl Host, now_ms: u64) {
        let due: Vec<_> = self
            .pulls
            .iter()
            .filter(|(_, (at, _))| now_ms.saturating_sub(*at) >= MESH_PULL_MS)
            .map(|(k, v)| (*k, *v))
            .collect();
        for ((peer, ws), (at, theirs)) in due {
            self.pulls.remove(&(peer, ws));
            let heard = self
                .authored
                .get(&peer)
                .is_some_and(|t| *t + MESH_PULL_MS >= at);
            if heard || self.digests.get(host, &ws) == theirs {
                continue;
            }
            if !host.workspaces_for(&peer).contains(&ws) {
                continue;
            }
            self.pull_from(host, peer, ws, now_ms);
        }
    }

    /// Sends in full the sync messages that held changes back
    /// [`RELAY_LAZY_MS`] ago (to a peer that has had them since, Automerge
    /// offers nothing), and forgets what is no longer fresh.
    fn follow_up(&mut self, host: &mut impl Host, now_ms: u64) {
        let fresh = |t: &u64| now_ms.saturating_sub(*t) < RELAY_LAZY_MS;
        self.relayed.retain(|_, t| fresh(t));
        self.asked.retain(|_, (_, t)| fresh(t));
        let due: Vec<_> = self
            .follow_ups
            .iter()
            .filter(|(_, t)| **t <= now_ms)
            .map(|(k, _)| *k)
            .collect();
        for (peer, ws, doc) in due {
            self.follow_ups.remove(&(peer, ws, doc));
            self.generate_in_full(host, peer, ws, doc);
        }
    }

    /// [`Engine::generate`] holding nothing back.
    fn generate_in_full(
        &mut self,
        host: &mut impl Host,
        peer: PeerId,
        ws: WorkspaceId,
        doc: DocId,
    ) {
        // The message that held changes back may be unanswered (a peer with
        // nothing to say does not answer): Automerge would wait for that
        // answer before it sends again.
        if let Some(ds) = self
            .sessions
            .get_mut(&(peer, ws))
            .and_then(|s| s.docs.get_mut(&doc))
        {
            ds.state.in_flight = false;
        }
        self.eager = true;
        self.generate(host, peer, ws, doc);
        self.eager = false;
    }

    /// A change by `author` was applied here.
    fn heard_from(&mut self, author: &[u8; 32]) {
        let Ok(peer) = crate::ids::peer_id_of(author) else {
            return;
        };
        if self.authored.len() >= MAX_PULLS && !self.authored.contains_key(&peer) {
            self.authored.clear();
        }
        self.authored.insert(peer, self.now_ms);
    }

    fn open(&mut self, host: &mut impl Host, peer: PeerId, ws: WorkspaceId) {
        let Some(token) = host.token(&ws) else { return };
        let session = self.sessions.entry((peer, ws)).or_default();
        if session.opening || session.admitted.is_some() {
            return;
        }
        session.opening = true;
        self.send(
            peer,
            Frame::Open {
                workspace: ws,
                token,
            },
        );
    }

    fn received(&mut self, host: &mut impl Host, peer: PeerId, frame: Frame, now_ms: u64) {
        let ws = frame.workspace();
        match frame {
            Frame::Open { token, .. } => match self.admit(host, peer, ws, &token, now_ms) {
                Ok(()) => {
                    let token = host.token(&ws).unwrap_or_default();
                    self.send(
                        peer,
                        Frame::Accept {
                            workspace: ws,
                            token,
                        },
                    );
                    self.start(host, peer, ws);
                }
                Err(why) => {
                    self.refuse(peer, ws, why);
                    self.strike(peer, "refused token");
                }
            },
            Frame::Accept { token, .. } => {
                let expected = self.sessions.get(&(peer, ws)).is_some_and(|s| s.opening);
                if !expected {
                    return;
                }
                match self.admit(host, peer, ws, &token, now_ms) {
                    Ok(()) => self.start(host, peer, ws),
                    Err(why) => {
                        self.refuse(peer, ws, why);
                        self.strike(peer, "refused token");
                    }
                }
            }
            Frame::Refuse { mut reason, .. } => {
                if self.sessions.remove(&(peer, ws)).is_some() {
                    if reason.len() > MAX_REASON_BYTES {
                        let mut end = MAX_REASON_BYTES;
                        while !reason.is_char_boundary(end) {
                            end -= 1;
                        }
                        reason.truncate(end);
                    }
                    self.event(Event::SessionRefused {
                        peer,
                        workspace: ws,
                        reason: SessionRefusal::ByPeer(reason),
                    });
                }
            }
            Frame::Close { .. } => {
                if self.sessions.contains_key(&(peer, ws)) {
                    self.close_session((peer, ws));
                }
            }
            Frame::Presence { files, .. } => self.peer_presence(peer, ws, files),
            Frame::Addresses { cards, .. } => self.peer_cards(host, peer, ws, cards, now_ms),
            Frame::Sync {
                doc,
                message,
                changes,
                signatures,
                sent_ms,
                ..
            } => {
                if !self.admitted(peer, ws) {
                    // Content from a peer we have not admitted is dropped unread.
                    self.strike(peer, "sync frame outside an admitted session");
                    return;
                }
                self.clock_reading(peer, sent_ms, now_ms);
                let received = Received {
                    message,
                    changes,
                    signatures,
                    sent_ms,
                };
                self.receive_sync(host, peer, ws, doc, received, now_ms);
            }
            Frame::Chunk {
                doc,
                message,
                chunk,
                signatures,
                sent_ms,
                ..
            } => {
                if !self.admitted(peer, ws) {
                    self.strike(peer, "chunk frame outside an admitted session");
                    return;
                }
                self.clock_reading(peer, sent_ms, now_ms);
                let received = Received {
                    message,
                    changes: Vec::new(),
                    signatures,
                    sent_ms,
                };
                self.receive_chunk(host, peer, ws, doc, chunk, received, now_ms);
            }
        }
    }

    /// Whether `peer` has an admitted session for `ws`.
    fn admitted(&self, peer: PeerId, ws: WorkspaceId) -> bool {
        self.sessions
            .get(&(peer, ws))
            .and_then(|s| s.admitted)
            .is_some()
    }

    fn admit(
        &mut self,
        host: &mut impl Host,
        peer: PeerId,
        ws: WorkspaceId,
        token: &[u8],
        now_ms: u64,
    ) -> Result<(), AdmitError> {
        if host.documents(&ws).is_empty() {
            // The peer gets the same answer as for a bad token: a stranger
            // learns nothing, not even whether this node holds the workspace.
            return Err(AdmitError::UnknownWorkspace);
        }
        let access = host.admit(&peer, &ws, token, now_ms)?;
        let session = self.sessions.entry((peer, ws)).or_default();
        session.opening = false;
        if session.admitted.is_none() {
            session.admitted_ms = now_ms;
        }
        session.admitted = Some(access);
        session.token = token.to_vec();
        Ok(())
    }

    /// Refuses a session: the peer is told [`REFUSED`] whatever the reason
    /// (which workspaces a node holds, whom a token names and why it failed
    /// stay here); the event carries the reason, for the log and audit.
    fn refuse(&mut self, peer: PeerId, ws: WorkspaceId, why: AdmitError) {
        self.sessions.remove(&(peer, ws));
        self.send(
            peer,
            Frame::Refuse {
                workspace: ws,
                reason: REFUSED.into(),
            },
        );
        self.event(Event::SessionRefused {
            peer,
            workspace: ws,
            reason: SessionRefusal::ByUs(why),
        });
    }

    /// Starts syncing every document of `ws` with an admitted peer.
    fn start(&mut self, host: &mut impl Host, peer: PeerId, ws: WorkspaceId) {
        self.event(Event::SessionOpened {
            peer,
            workspace: ws,
        });
        self.greet_with_presence(peer, ws);
        self.greet_with_cards(host, peer, ws);
        for doc in host.documents(&ws) {
            if !self.resumes_in_step(host, peer, ws, doc) {
                self.generate(host, peer, ws, doc);
            }
        }
    }

    /// Whether `doc` ended its last session with `peer` in step and has not
    /// changed here since (its heads are the shared heads saved then): its
    /// sync state is restored and no message sent, so a session over a
    /// large workspace costs only the documents that moved (a host may
    /// keep idle documents unloaded). Sound because the peer skips under
    /// the same condition: if both skip, each holds all the other's
    /// heads; if the peer changed the document, its message starts the
    /// exchange and this side answers from the restored state.
    fn resumes_in_step(
        &mut self,
        host: &mut impl Host,
        peer: PeerId,
        ws: WorkspaceId,
        doc: DocId,
    ) -> bool {
        let Some(session) = self.sessions.get_mut(&(peer, ws)) else {
            return false;
        };
        if session.docs.contains_key(&doc) {
            return false;
        }
        // Restored here either way: `generate` would restore the same.
        let state = restored_state(host, &peer, &doc);
        let mut shared = state.shared_heads.clone();
        session.docs.insert(doc, DocSync { state, idle: None });
        let Some(mut heads) = host.heads(&ws, &doc) else {
            return false;
        };
        heads.sort();
        shared.sort();
        !heads.is_empty() && heads == shared
    }

    fn close_session(&mut self, key: (PeerId, WorkspaceId)) {
        let Some(session) = self.sessions.remove(&key) else {
            return;
        };
        for (doc, ds) in session.docs {
            self.outputs.push_back(Output::SaveSyncState {
                peer: key.0,
                doc,
                state: ds.state.encode(),
            });
        }
        if session.admitted.is_some() {
            self.event(Event::SessionClosed {
                peer: key.0,
                workspace: key.1,
            });
        }
    }

    /// After `doc` of `ws` changed (locally, or by changes from `source`):
    /// offer it to every other admitted peer, and start syncing documents the
    /// workspace gained.
    fn changed(
        &mut self,
        host: &mut impl Host,
        ws: &WorkspaceId,
        doc: &DocId,
        source: Option<PeerId>,
    ) {
        self.digests.changed(host, ws, doc);
        let peers = self.peers_of(ws);
        // A document made here reaches peers by its own local change; only a
        // peer's change to the index can name documents we must ask for.
        let docs = if source.is_some() && host.names_documents(ws, doc) {
            host.documents(ws)
        } else {
            Vec::new()
        };
        for peer in peers {
            let unknown: Vec<DocId> = match self.sessions.get(&(peer, *ws)) {
                Some(s) => docs
                    .iter()
                    .filter(|d| !s.docs.contains_key(d))
                    .copied()
                    .collect(),
                None => docs.clone(),
            };
            for d in unknown {
                self.generate(host, peer, *ws, d);
            }
            if Some(peer) != source {
                self.generate(host, peer, *ws, *doc);
            }
        }
    }

    /// Keeps local changes for `generate` (bounded: cleared when full).
    fn keep_local(&mut self, doc: DocId, changes: Vec<Change>) {
        for c in changes {
            let size = c.raw_bytes().len();
            if self.recent_local.len() >= MAX_RECENT_LOCAL
                || self.recent_local_bytes + size > MAX_RECENT_LOCAL_BYTES
            {
                self.recent_local.clear();
                self.recent_local_bytes = 0;
            }
            if size <= MAX_RECENT_LOCAL_BYTES {
                self.recent_local_bytes += size;
                self.recent_local.insert((doc, c.hash()), c);
            }
        }
    }

    fn strike(&mut self, peer: PeerId, reason: &str) {
        let strikes = self.strikes.entry(peer).or_default();
        *strikes += 1;
        if *strikes >= self.limits.max_strikes {
            self.outputs.push_back(Output::Disconnect {
                peer,
                reason: format!("too many protocol violations (last: {reason})"),
            });
        }
    }

    fn send(&mut self, peer: PeerId, frame: Frame) {
        self.outputs.push_back(Output::Send { peer, frame });
    }

    fn event(&mut self, e: Event) {
        self.outputs.push_back(Output::Event(e));
    }
}

/// Runs Automerge code on data from a peer; a panic is a refusal.
fn guarded<T>(f: impl FnOnce() -> T) -> Option<T> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

impl Session {
    /// The sync state of `doc` in this session, restored from the host's
    /// saved state when the document is first synced.
    fn doc(&mut self, host: &impl Host, peer: &PeerId, doc: DocId) -> &mut DocSync {
        self.docs.entry(doc).or_insert_with(|| DocSync {
            state: restored_state(host, peer, &doc),
            idle: None,
        })
    }
}

/// The sync state of (peer, doc), fresh or restored.
fn restored_state(host: &impl Host, peer: &PeerId, doc: &DocId) -> sync::State {
    host.sync_state(peer, doc)
        .and_then(|bytes| sync::State::decode(&bytes).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
