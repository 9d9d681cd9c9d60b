//! The engine driven by a small in-memory network: 2–5 peers with concurrent
//! edits converge to identical heads under any interleaving, with sessions
//! dropped mid-flight, changes re-delivered and reordered across reconnects,
//! and a member whose writes everyone must refuse. Whether a change is
//! accepted is decided by the real write rule (`policy::WriteRule`) over a
//! real access document: node 0 created the workspace, the writers are
//! developers, the others viewers; every edit cites the access heads.

use std::collections::{BTreeMap, HashMap, VecDeque};

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ChangeHash, ObjType, ROOT, ReadDoc};
use ed25519_dalek::SigningKey;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::capability::CapabilityError;
use crate::ids::actor_id;
use crate::wire::{self, OpenFile};

const WS: WorkspaceId = WorkspaceId::from_bytes([7; 16]);
const DOCS: [DocId; 3] = [
    DocId::from_bytes([1; 16]),
    DocId::from_bytes([2; 16]),
    DocId::from_bytes([3; 16]),
];
/// A document no host holds until one of them makes it.
const LATE: DocId = DocId::from_bytes([4; 16]);
const TOKEN: &[u8] = b"member";

struct TestHost {
    key: SigningKey,
    docs: BTreeMap<DocId, AutoCommit>,
    sigs: HashMap<(DocId, ChangeHash), SignedHead>,
    /// Authors whose changes everyone accepts (developers in `access`).
    writers: Vec<[u8; 32]>,
    /// The workspace's access document, as node 0 (the root) wrote it.
    access: AutoCommit,
    root: [u8; 32],
    rule: crate::policy::WriteRule,
    states: HashMap<(PeerId, DocId), Vec<u8>>,
    peers: Vec<PeerId>,
    /// When set, every admission fails.
    refuse_all: bool,
    /// Peers that are members of no workspace here.
    outsiders: Vec<PeerId>,
}

impl TestHost {
    fn new(n: u8, writers: Vec<[u8; 32]>) -> Self {
        let key = SigningKey::from_bytes(&[n + 1; 32]);
        Self {
            key,
            docs: BTreeMap::new(),
            sigs: HashMap::new(),
            writers,
            access: AutoCommit::new(),
            root: [0; 32],
            rule: crate::policy::WriteRule::default(),
            states: HashMap::new(),
            peers: Vec::new(),
            refuse_all: false,
            outsiders: Vec::new(),
        }
    }

    fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// A local edit: commit, sign, and tell the engine.
    fn edit(&mut self, doc: DocId, rng: &mut SmallRng, tag: u64) {
        let actor = ActorId::from(actor_id(&self.public(), 0).as_slice());
        let cites = self.access.get_heads();
        let am = self.document(&WS, &doc).expect("held");
        am.set_actor(actor);
        match rng.random_range(0..3) {
            0 => {
                am.put(ROOT, format!("k{}", rng.random_range(0..4)), tag as i64)
                    .expect("put");
            }
            1 => {
                let list = match am.get(ROOT, "list") {
                    Ok(Some((automerge::Value::Object(ObjType::List), id))) => id,
                    _ => am.put_object(ROOT, "list", ObjType::List).expect("list"),
                };
                let len = am.length(&list);
                am.insert(&list, rng.random_range(0..=len), tag as i64)
                    .expect("insert");
            }
            _ => {
                am.put(ROOT, "shared", format!("value {tag}")).expect("put");
            }
        }
        self.commit_signed(doc, &cites);
    }

    /// Puts `value` at the root's `key` as one signed change.
    fn put(&mut self, doc: DocId, key: &str, value: String) {
        let actor = ActorId::from(actor_id(&self.public(), 0).as_slice());
        let cites = self.access.get_heads();
        let am = self.document(&WS, &doc).expect("held");
        am.set_actor(actor);
        am.put(ROOT, key, value).expect("put");
        self.commit_signed(doc, &cites);
    }

    /// Commits what is staged in `doc`, citing `cites`, and signs it.
    fn commit_signed(&mut self, doc: DocId, cites: &[ChangeHash]) {
        let am = self.docs.get_mut(&doc).expect("held");
        am.commit_with(
            automerge::transaction::CommitOptions::default()
                .with_message(crate::envelope::encode_citation(cites)),
        );
        let hash = am.get_last_local_change().expect("change").hash();
        let sig = SignedHead::sign(&self.key, 0, &WS, &doc, hash.0);
        self.sigs.insert((doc, hash), sig);
    }

    fn heads(&mut self) -> BTreeMap<DocId, Vec<ChangeHash>> {
        self.docs
            .iter_mut()
            .map(|(d, am)| (*d, am.get_heads()))
            .collect()
    }
}

impl Host for TestHost {
    fn documents(&self, ws: &WorkspaceId) -> Vec<DocId> {
        if *ws != WS {
            return Vec::new();
        }
        let mut docs = DOCS.to_vec();
        if self.docs.contains_key(&LATE) {
            docs.push(LATE);
        }
        docs
    }
    fn document(&mut self, ws: &WorkspaceId, doc: &DocId) -> Option<&mut AutoCommit> {
        (*ws == WS && (DOCS.contains(doc) || *doc == LATE))
            .then(|| self.docs.entry(*doc).or_default())
    }
    fn has_document(&self, ws: &WorkspaceId, doc: &DocId) -> bool {
        *ws == WS && self.docs.contains_key(doc)
    }
    fn signature(&self, _ws: &WorkspaceId, doc: &DocId, hash: &ChangeHash) -> Option<SignedHead> {
        self.sigs.get(&(*doc, *hash)).cloned()
    }
    fn token(&self, ws: &WorkspaceId) -> Option<Vec<u8>> {
        (*ws == WS).then(|| TOKEN.to_vec())
    }
    fn workspaces_for(&self, peer: &PeerId) -> Vec<WorkspaceId> {
        if self.outsiders.contains(peer) {
            Vec::new()
        } else {
            vec![WS]
        }
    }
    fn admit(
        &mut self,
        _peer: &PeerId,
        _ws: &WorkspaceId,
        token: &[u8],
        _now: u64,
    ) -> Result<Access, AdmitError> {
        if self.refuse_all {
            return Err(AdmitError::Revoked);
        }
        if token == TOKEN {
            Ok(Access {
                read: true,
                write: true,
            })
        } else {
            Err(AdmitError::Token(CapabilityError::NotACapability(
                "not the test token".into(),
            )))
        }
    }
    fn may_write(
        &mut self,
        ws: &WorkspaceId,
        _doc: &DocId,
        author: &[u8; 32],
        change: crate::policy::Written<'_>,
    ) -> WriteDecision {
        let access = crate::policy::AccessDoc(&self.access);
        self.rule
            .may_write(ws, access, Some(self.root), false, author, change)
    }
    fn sync_state(&self, peer: &PeerId, doc: &DocId) -> Option<Vec<u8>> {
        self.states.get(&(*peer, *doc)).cloned()
    }
}

struct Node {
    id: PeerId,
    host: TestHost,
    engine: Engine,
    rejected: usize,
    /// What each peer said it has open, until its session closed.
    presence: BTreeMap<PeerId, Vec<OpenFile>>,
    /// Members' address cards the engine reported as new.
    cards: Vec<(PeerId, crate::card::AddressCard)>,
    /// `Output::Persist`s (one per document per apply) and `Snapshot`s.
    persists: usize,
    /// `Output::Snapshot`s: documents replaced whole by a chunk.
    snapshots: usize,
}

/// Directed links: frames in flight for the current connection, plus frames
/// of earlier connections that carried changes (for re-delivery).
struct Net {
    nodes: Vec<Node>,
    links: BTreeMap<(usize, usize), VecDeque<Frame>>,
    stale: Vec<(usize, usize, Frame)>,
    now: u64,
    /// Local edits made by each node.
    edits: Vec<usize>,
    /// Announcements published, by node.
    announced: Vec<(usize, [u8; 16])>,
    /// Dials requested, by node.
    dials: Vec<(usize, PeerId)>,
}

impl Net {
    fn new(n: usize, writers: usize) -> Self {
        let hosts: Vec<TestHost> = (0..n as u8).map(|i| TestHost::new(i, Vec::new())).collect();
        let allowed: Vec<[u8; 32]> = hosts.iter().take(writers).map(TestHost::public).collect();
        let ids: Vec<PeerId> = hosts
            .iter()
            .map(|h| crate::ids::peer_id_of(&h.public()).expect("peer id"))
            .collect();
        let root = hosts[0].public();
        let access = access_document(&root, &ids, writers);
        let nodes = hosts
            .into_iter()
            .zip(&ids)
            .map(|(mut host, id)| {
                host.writers = allowed.clone();
                host.access = access.clone();
                host.root = root;
                host.peers = ids.clone();
                Node {
                    id: *id,
                    host,
                    engine: Engine::new(Limits::default()),
                    rejected: 0,
                    presence: BTreeMap::new(),
                    cards: Vec::new(),
                    persists: 0,
                    snapshots: 0,
                }
            })
            .collect();
        Self {
            nodes,
            links: BTreeMap::new(),
            stale: Vec::new(),
            now: 0,
            edits: vec![0; n],
            announced: Vec::new(),
            dials: Vec::new(),
        }
    }

    fn input(&mut self, i: usize, input: Input) {
        let node = &mut self.nodes[i];
        node.engine.handle(&mut node.host, input, self.now);
        self.drain(i);
    }

    /// What the node's driver does at the end of a group of inputs.
    fn settle(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.engine.settle(&mut node.host, self.now);
        self.drain(i);
    }

    fn drain(&mut self, i: usize) {
        while let Some(out) = self.nodes[i].engine.poll_output() {
            if matches!(out, Output::Snapshot { .. }) {
                self.nodes[i].snapshots += 1;
            }
            match out {
                Output::Send { peer, frame } => {
                    let j = self.index(&peer);
                    // Every frame goes through the wire encoding.
                    let bytes = wire::encode(&frame).expect("encode");
                    let frame = wire::decode(&bytes).expect("decode");
                    if let Some(q) = self.links.get_mut(&(i, j)) {
                        q.push_back(frame);
                    }
                }
                Output::SaveSyncState { peer, doc, state } => {
                    self.nodes[i].host.states.insert((peer, doc), state);
                }
                Output::Persist {
                    doc, signatures, ..
                }
                | Output::Snapshot {
                    doc, signatures, ..
                } => {
                    self.nodes[i].persists += 1;
                    for s in signatures {
                        self.nodes[i].host.sigs.insert((doc, ChangeHash(s.hash)), s);
                    }
                }
                Output::Event(Event::Rejected { count, .. }) => self.nodes[i].rejected += count,
                Output::Announce { workspace, digest } => {
                    assert_eq!(workspace, WS);
                    self.announced.push((i, digest));
                }
                Output::Dial { peer } => self.dials.push((i, peer)),
                Output::Event(Event::Presence { peer, files, .. }) => {
                    self.nodes[i].presence.insert(peer, files);
                }
                Output::Event(Event::SessionClosed { peer, .. }) => {
                    self.nodes[i].presence.remove(&peer);
                }
                Output::Event(Event::AddressCard { peer, card }) => {
                    self.nodes[i].cards.push((peer, card));
                }
                Output::Event(_) | Output::Disconnect { .. } => {}
            }
        }
    }

    fn index(&self, peer: &PeerId) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id == *peer)
            .expect("known peer")
    }

    fn connected(&self, a: usize, b: usize) -> bool {
        self.links.contains_key(&(a, b))
    }

    fn connect(&mut self, a: usize, b: usize) {
        if a == b || self.connected(a, b) {
            return;
        }
        self.links.insert((a, b), VecDeque::new());
        self.links.insert((b, a), VecDeque::new());
        let (ida, idb) = (self.nodes[a].id, self.nodes[b].id);
        self.input(a, Input::Connected { peer: idb });
        self.input(b, Input::Connected { peer: ida });
    }

    fn disconnect(&mut self, a: usize, b: usize) {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(q) = self.links.remove(&(x, y)) {
                // What was in flight is lost; change-carrying frames may be
                // seen again later (duplicated, out of order).
                for f in q {
                    if let Frame::Sync {
                        workspace,
                        doc,
                        changes,
                        signatures,
                        sent_ms: 0,
                        ..
                    } = f
                    {
                        self.stale.push((
                            x,
                            y,
                            Frame::Sync {
                                workspace,
                                doc,
                                message: None,
                                changes,
                                signatures,
                                sent_ms: 0,
                            },
                        ));
                    }
                }
            }
        }
        let (ida, idb) = (self.nodes[a].id, self.nodes[b].id);
        self.input(a, Input::Disconnected { peer: idb });
        self.input(b, Input::Disconnected { peer: ida });
    }

    /// Delivers one frame on (a, b); false if there was none.
    fn deliver(&mut self, a: usize, b: usize) -> bool {
        let Some(frame) = self.links.get_mut(&(a, b)).and_then(VecDeque::pop_front) else {
            return false;
        };
        let peer = self.nodes[a].id;
        self.input(b, Input::Received { peer, frame });
        true
    }

    /// Re-delivers a stale change-carrying frame inside a live session.
    fn redeliver(&mut self, k: usize) {
        if self.stale.is_empty() {
            return;
        }
        let (a, b, frame) = self.stale.swap_remove(k % self.stale.len());
        if self.connected(a, b) {
            let peer = self.nodes[a].id;
            self.input(b, Input::Received { peer, frame });
        }
    }

    fn edit(&mut self, i: usize, doc: DocId, rng: &mut SmallRng) {
        self.now += 1;
        let tag = self.now;
        self.nodes[i].host.edit(doc, rng, tag);
        self.edits[i] += 1;
        // Half the edits give their change, half leave the engine to
        // rebuild it: both paths run.
        let changes = if self.now.is_multiple_of(2) {
            let am = self.nodes[i].host.docs.get_mut(&doc).expect("held");
            am.get_last_local_change().into_iter().collect()
        } else {
            Vec::new()
        };
        self.input(
            i,
            Input::LocalChange {
                workspace: WS,
                doc,
                changes,
            },
        );
    }

    /// Connects everyone and delivers until nothing is in flight.
    fn heal(&mut self) -> usize {
        let n = self.nodes.len();
        for a in 0..n {
            for b in a + 1..n {
                self.connect(a, b);
            }
        }
        self.quiesce()
    }

    /// Delivers on the links there are until nothing is in flight.
    fn quiesce(&mut self) -> usize {
        let mut steps = 0;
        heal_watching(self, |_, _| {
            steps += 1;
            assert!(steps < 100_000, "sync did not quiesce");
        });
        steps
    }
}

/// The access document as the root (the first of `ids`) writes it: the
/// first `writers` members developers (the root an admin), the rest viewers.
fn access_document(root: &[u8; 32], ids: &[PeerId], writers: usize) -> AutoCommit {
    let mut am = AutoCommit::new();
    am.set_actor(ActorId::from(actor_id(root, 0).as_slice()));
    am.put(ROOT, "root_key", hex::encode(root))
        .expect("root key");
    let members = am
        .put_object(ROOT, "members", ObjType::Map)
        .expect("members");
    for (i, id) in ids.iter().enumerate() {
        let role = match i {
            0 => "admin",
            i if i < writers => "developer",
            _ => "viewer",
        };
        let entry = am
            .put_object(&members, id.to_string(), ObjType::Map)
            .expect("entry");
        am.put(&entry, "role", role).expect("role");
    }
    am.commit();
    am
}

/// Runs a random schedule, heals, and checks convergence.
fn run(seed: u64, peers: usize, writers: usize, ops: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut net = Net::new(peers, writers);
    for _ in 0..ops {
        let a = rng.random_range(0..peers);
        let b = rng.random_range(0..peers);
        match rng.random_range(0..100) {
            0..=29 => {
                let doc = DOCS[rng.random_range(0..DOCS.len())];
                net.edit(a, doc, &mut rng);
            }
            30..=39 => net.connect(a, b),
            40..=44 => net.disconnect(a, b),
            45..=48 => net.redeliver(rng.random_range(0..usize::MAX)),
            _ => {
                net.deliver(a, b);
            }
        }
    }
    net.heal();
    // Nothing waits any more, so nothing is left in any pending buffer: each
    // frame's pass over it costs only what still waits.
    for (i, node) in net.nodes.iter().enumerate() {
        assert_eq!(
            node.engine.pending_documents(),
            0,
            "seed {seed}: node {i} keeps documents pending after healing"
        );
    }
    // Every honest node holds exactly the writers' changes, identically.
    let reference = net.nodes[0].host.heads();
    for (i, node) in net.nodes.iter_mut().enumerate().take(writers).skip(1) {
        assert_eq!(
            node.host.heads(),
            reference,
            "seed {seed}: node {i} diverged from node 0"
        );
    }
    let written: usize = net.edits.iter().take(writers).sum();
    for node in net.nodes.iter_mut().take(writers) {
        let held: usize = node
            .host
            .docs
            .values_mut()
            .map(|am| am.get_changes(&[]).len())
            .sum();
        assert_eq!(
            held, written,
            "seed {seed}: every writer's change everywhere, nothing else"
        );
        for (doc, am) in &mut node.host.docs {
            for meta in am.get_changes_meta(&[]) {
                let allowed: Vec<[u8; 16]> =
                    node.host.writers.iter().map(|w| actor_id(w, 0)).collect();
                assert!(
                    allowed
                        .iter()
                        .any(|a| a.as_slice() == meta.actor.to_bytes()),
                    "seed {seed}: a change by a non-writer was applied to {doc}"
                );
            }
        }
    }
}

#[test]
fn two_peers_converge() {
    for seed in 0..20 {
        run(seed, 2, 2, 200);
    }
}

#[test]
fn a_viewers_changes_are_refused_everywhere_and_sync_still_quiesces() {
    for seed in 0..10 {
        run(1000 + seed, 4, 3, 300);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 48, ..Default::default() })]
    #[test]
    fn peers_converge_under_any_interleaving(seed in proptest::prelude::any::<u64>(), peers in 2usize..=5, ops in 50usize..400) {
        run(seed, peers, peers, ops);
    }
}

#[test]
fn a_stranger_without_a_token_learns_nothing() {
    let mut net = Net::new(2, 2);
    let mut rng = SmallRng::seed_from_u64(1);
    net.edit(0, DOCS[0], &mut rng);
    net.links.insert((1, 0), VecDeque::new());
    net.links.insert((0, 1), VecDeque::new());
    let stranger = net.nodes[1].id;
    net.input(
        0,
        Input::Received {
            peer: stranger,
            frame: Frame::Open {
                workspace: WS,
                token: b"forged".to_vec(),
            },
        },
    );
    let answers: Vec<Frame> = net.links[&(0, 1)].iter().cloned().collect();
    assert_eq!(answers.len(), 1);
    assert!(matches!(&answers[0], Frame::Refuse { reason, .. } if reason == REFUSED));
    // A sync frame outside a session is ignored, and repeated ones get the peer disconnected.
    let before = net.nodes[0].host.heads();
    for _ in 0..3 {
        let node = &mut net.nodes[0];
        node.engine.handle(
            &mut node.host,
            Input::Received {
                peer: stranger,
                frame: Frame::Sync {
                    workspace: WS,
                    doc: DOCS[0],
                    message: None,
                    changes: vec![vec![1, 2, 3]],
                    signatures: vec![],
                    sent_ms: 0,
                },
            },
            0,
        );
    }
    let mut disconnected = false;
    while let Some(o) = net.nodes[0].engine.poll_output() {
        disconnected |= matches!(o, Output::Disconnect { .. });
        assert!(
            !matches!(o, Output::Send { .. }),
            "nothing is sent to a stranger"
        );
    }
    assert!(disconnected);
    assert_eq!(net.nodes[0].host.heads(), before);
    // An unknown workspace gets the same answer as a bad token.
    net.input(
        0,
        Input::Received {
            peer: stranger,
            frame: Frame::Open {
                workspace: WorkspaceId::from_bytes([0; 16]),
                token: TOKEN.to_vec(),
            },
        },
    );
    let last = net.links[&(0, 1)].back().cloned();
    assert!(matches!(last, Some(Frame::Refuse { reason, .. }) if reason == REFUSED));
}

/// A sync frame from `peer` carrying `changes` to `DOCS[0]` beside no
/// sync message, vouched for by `signatures`.
fn changes_from(peer: PeerId, changes: Vec<Vec<u8>>, signatures: Vec<SignedHead>) -> Input {
    Input::Received {
        peer,
        frame: Frame::Sync {
            workspace: WS,
            doc: DOCS[0],
            message: None,
            changes,
            signatures,
            sent_ms: 0,
        },
    }
}

#[test]
fn forged_signatures_and_stolen_actor_ids_are_refused() {
    let mut net = Net::new(3, 3);
    let mut rng = SmallRng::seed_from_u64(2);
    net.connect(0, 1);
    net.heal();
    // Node 2 makes a change, then node 1 tries to pass it off with its own
    // signature (wrong actor) and with a corrupted signature.
    net.nodes[2].host.edit(DOCS[0], &mut rng, 1);
    let am = net.nodes[2].host.docs.get_mut(&DOCS[0]).expect("doc");
    let change = am.get_last_local_change().expect("change");
    let raw = change.raw_bytes().to_vec();
    let forged_actor = SignedHead::sign(&net.nodes[1].host.key, 0, &WS, &DOCS[0], change.hash().0);
    let mut corrupted = net.nodes[2].host.sigs[&(DOCS[0], change.hash())].clone();
    corrupted.signature[0] ^= 1;
    let from = net.nodes[1].id;
    for sig in [forged_actor, corrupted] {
        net.input(0, changes_from(from, vec![raw.clone()], vec![sig]));
    }
    assert!(
        net.nodes[0].host.docs[&DOCS[0]]
            .get_change_by_hash(&change.hash())
            .is_none(),
        "never applied"
    );
    assert!(net.nodes[0].rejected >= 1, "the bad signature was counted");
    // With the author's real signature it applies.
    let genuine = net.nodes[2].host.sigs[&(DOCS[0], change.hash())].clone();
    net.input(0, changes_from(from, vec![raw], vec![genuine]));
    assert!(
        net.nodes[0]
            .host
            .docs
            .get_mut(&DOCS[0])
            .expect("doc")
            .get_change_by_hash(&change.hash())
            .is_some()
    );
}

#[test]
fn a_compressed_change_is_sized_before_it_is_inflated() {
    // A writer's genuine, signed change whose text deflates 1000 to 1: the
    // receiver refuses it by its inflated size before Automerge inflates it,
    // while a compressed change that fits is applied.
    let mut net = Net::new(2, 2);
    let cap = 1 << 20;
    net.nodes[0].engine = Engine::new(Limits {
        max_pending_bytes: cap,
        ..Limits::default()
    });
    net.connect(0, 1);
    net.heal();
    let from = net.nodes[1].id;
    let rejected_before = net.nodes[0].rejected;
    for (key, len, fits) in [("small", 64 << 10, true), ("bomb", 2 * cap, false)] {
        net.nodes[1].host.put(DOCS[0], key, "0".repeat(len));
        let host = &mut net.nodes[1].host;
        let mut change = host.docs[&DOCS[0]]
            .clone()
            .get_last_local_change()
            .expect("change")
            .clone();
        let bytes = change.bytes().into_owned();
        assert_eq!(bytes[8], 2, "sent compressed");
        assert!(bytes.len() < len / 100, "{} bytes carry {len}", bytes.len());
        let sig = host.sigs[&(DOCS[0], change.hash())].clone();
        net.input(0, changes_from(from, vec![bytes], vec![sig]));
        let applied = net.nodes[0]
            .host
            .docs
            .get_mut(&DOCS[0])
            .expect("doc")
            .get_change_by_hash(&change.hash())
            .is_some();
        assert_eq!(applied, fits, "{key}");
    }
    assert_eq!(
        net.nodes[0].rejected - rejected_before,
        1,
        "the bomb is a strike"
    );
    assert_eq!(
        net.nodes[0].engine.pending_bytes(),
        0,
        "nothing held for it"
    );
}

#[test]
fn after_quiescence_each_side_knows_the_others_heads() {
    for seed in 0..10 {
        let mut rng = SmallRng::seed_from_u64(500 + seed);
        let mut net = Net::new(2, 2);
        net.connect(0, 1);
        net.heal();
        for _ in 0..20 {
            net.edit(0, DOCS[0], &mut rng);
        }
        net.heal();
        let theirs = net.nodes[0].engine.their_heads(&net.nodes[1].id, &WS);
        let actual = net.nodes[1].host.heads();
        for (doc, heads) in actual {
            let known: Vec<ChangeHash> = theirs
                .iter()
                .find(|(d, _)| *d == doc)
                .map(|(_, h)| h.clone())
                .unwrap_or_default();
            assert!(
                heads.iter().all(|h| known.contains(h)),
                "seed {seed}: stale view of {doc}"
            );
        }
    }
}

#[test]
fn changes_relayed_through_a_middle_node_arrive_with_their_signatures() {
    for seed in 0..10 {
        let mut rng = SmallRng::seed_from_u64(900 + seed);
        let mut net = Net::new(3, 3);
        // A line: 0 - 1 - 2. Node 2 only hears node 0 through node 1.
        net.connect(0, 1);
        net.connect(1, 2);
        for _ in 0..60 {
            let doc = DOCS[rng.random_range(0..DOCS.len())];
            let who = if rng.random_bool(0.5) { 0 } else { 2 };
            net.edit(who, doc, &mut rng);
            for (a, b) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
                if rng.random_bool(0.5) {
                    net.deliver(a, b);
                }
            }
        }
        loop {
            let mut any = false;
            for (a, b) in [(0, 1), (1, 0), (1, 2), (2, 1)] {
                while net.deliver(a, b) {
                    any = true;
                }
            }
            if !any {
                break;
            }
        }
        let h0 = net.nodes[0].host.heads();
        assert_eq!(
            net.nodes[2].host.heads(),
            h0,
            "seed {seed}: node 2 is missing relayed changes"
        );
        assert_eq!(net.nodes[1].host.heads(), h0, "seed {seed}");
    }
}

#[test]
fn announcements_are_coalesced_and_prompt_a_dial_only_when_heads_differ() {
    let mut rng = SmallRng::seed_from_u64(77);
    let mut net = Net::new(2, 2);
    let (id0, id1) = (net.nodes[0].id, net.nodes[1].id);
    // Many local changes, one tick: one announcement, of node 0's heads.
    for _ in 0..5 {
        net.edit(0, DOCS[0], &mut rng);
    }
    assert!(net.announced.is_empty(), "announcements wait for the tick");
    net.input(0, Input::Tick);
    net.input(0, Input::Tick);
    assert_eq!(net.announced.len(), 1, "{:?}", net.announced);
    let (_, theirs) = net.announced[0];
    assert_eq!(theirs, digest(&mut net.nodes[0].host, &WS));
    // Node 1 is not connected and its heads differ: it dials node 0, once
    // per interval however often node 0 announces.
    let announce = |peer, digest| Input::Announced {
        peer,
        workspace: WS,
        digest,
    };
    net.input(1, announce(id0, theirs));
    net.input(1, announce(id0, theirs));
    assert_eq!(net.dials, vec![(1, id0)]);
    net.now += super::REDIAL_AFTER_ANNOUNCE_MS;
    net.input(1, announce(id0, theirs));
    assert_eq!(net.dials.len(), 2);
    // Connected and synced: equal digests, nothing to do.
    net.heal();
    assert_eq!(net.nodes[0].host.heads(), net.nodes[1].host.heads());
    let mine = digest(&mut net.nodes[1].host, &WS);
    assert_eq!(mine, theirs, "equal heads give equal digests");
    net.now += super::REDIAL_AFTER_ANNOUNCE_MS;
    net.input(1, announce(id0, theirs));
    // Heads differ but a session is open: the session carries the changes.
    net.input(0, announce(id1, [9; 16]));
    assert_eq!(net.dials.len(), 2, "{:?}", net.dials);
    // A workspace this node does not hold is ignored.
    net.input(
        1,
        Input::Announced {
            peer: id0,
            workspace: WorkspaceId::from_bytes([1; 16]),
            digest: [1; 16],
        },
    );
    assert_eq!(net.dials.len(), 2);
}

/// With applies batched (as the node runs the engine), the changes many
/// frames bring wait for `settle` and go into the document in one apply —
/// Automerge's apply costs time in proportion to the document, per call —
/// and the sender hears the new heads then; the result is the same.
#[test]
fn batched_applies_take_many_frames_in_one_apply_at_settle() {
    let mut rng = SmallRng::seed_from_u64(12);
    let mut net = Net::new(2, 2);
    net.nodes[1].engine.set_batch_applies(true);
    net.connect(0, 1);
    // Sessions open; node 1 answers at settle.
    for _ in 0..10 {
        net.deliver(0, 1);
        net.settle(1);
        net.deliver(1, 0);
    }
    net.heal();
    net.settle(1);
    net.heal();
    let before = net.nodes[1].host.heads()[&DOCS[0]].clone();
    for _ in 0..30 {
        net.edit(0, DOCS[0], &mut rng);
    }
    let mut frames = 0;
    while net.deliver(0, 1) {
        frames += 1;
    }
    assert!(frames >= 30, "one frame per edit: {frames}");
    assert_eq!(
        net.nodes[1].host.heads()[&DOCS[0]],
        before,
        "nothing applied before settle"
    );
    let persists = net.nodes[1].persists;
    net.settle(1);
    assert_eq!(
        net.nodes[1].persists,
        persists + 1,
        "thirty frames, one apply"
    );
    assert_eq!(
        net.nodes[1].host.heads()[&DOCS[0]],
        net.nodes[0].host.heads()[&DOCS[0]]
    );
    // The sender hears the new heads, and both sides go quiet.
    for _ in 0..20 {
        net.heal();
        net.settle(1);
    }
    assert_eq!(net.nodes[0].host.heads(), net.nodes[1].host.heads());
    assert_eq!(net.nodes[1].rejected, 0);
}

/// The digest the engine keeps as documents change (one document's hash per
/// change, not a walk over all of them) is always the one computed from
/// scratch: after local edits, after changes received from a peer, on
/// every document.
#[test]
fn the_kept_digest_is_always_the_digest_of_the_heads() {
    let mut rng = SmallRng::seed_from_u64(91);
    let mut net = Net::new(2, 2);
    for round in 0..30usize {
        let node = round % 2;
        for _ in 0..1 + round % 3 {
            let doc = DOCS[rng.random_range(0..DOCS.len())];
            net.edit(node, doc, &mut rng);
        }
        if round % 5 == 4 {
            net.heal();
        }
        for i in 0..2 {
            net.announced.clear();
            net.input(i, Input::Tick);
            for (who, announced) in net.announced.clone() {
                assert_eq!(
                    announced,
                    digest(&mut net.nodes[who].host, &WS),
                    "round {round}: node {who} announced a stale digest"
                );
            }
        }
    }
    net.heal();
    assert_eq!(
        digest(&mut net.nodes[0].host, &WS),
        digest(&mut net.nodes[1].host, &WS)
    );
}

#[test]
fn a_session_closed_on_revalidation_is_refused_and_the_peer_hears_it() {
    let mut rng = SmallRng::seed_from_u64(5);
    let mut net = Net::new(2, 2);
    net.edit(0, DOCS[0], &mut rng);
    net.heal();
    assert!(!net.nodes[1].engine.peers_of(&WS).is_empty());
    // Node 1's check of node 0's token now fails (its membership revoked):
    // node 0 is told only that it is not authorized.
    net.nodes[1].host.refuse_all = true;
    net.input(1, Input::Tick);
    assert!(
        net.links[&(1, 0)]
            .iter()
            .any(|f| matches!(f, Frame::Refuse { reason, .. } if reason == REFUSED))
    );
    assert!(
        net.nodes[1].engine.peers_of(&WS).is_empty(),
        "session closed"
    );
    net.heal();
    assert!(
        net.nodes[0].engine.peers_of(&WS).is_empty(),
        "node 0 heard the refusal"
    );
}

/// The change that ends a membership reaches the peer ahead of the refusal
/// on the same connection (the session closes only after the change was
/// offered to every admitted peer), so a revoked member learns why from the
/// revocation itself rather than guessing.
#[test]
fn a_revoked_peer_gets_the_revocation_before_the_refusal() {
    let mut rng = SmallRng::seed_from_u64(9);
    let mut net = Net::new(2, 2);
    net.edit(1, DOCS[2], &mut rng);
    net.heal();
    let before = net.links[&(1, 0)].len();
    // "The revocation": a change node 1 makes, after which node 0 fails
    // admission.
    net.edit(1, DOCS[2], &mut rng);
    let revocation = net.nodes[1]
        .host
        .docs
        .get_mut(&DOCS[2])
        .and_then(|am| am.get_last_local_change().map(|c| c.raw_bytes().to_vec()))
        .expect("the last change");
    net.nodes[1].host.refuse_all = true;
    net.input(1, Input::Tick);
    let after: Vec<&Frame> = net.links[&(1, 0)].iter().skip(before).collect();
    let sent = after
        .iter()
        .position(|f| matches!(f, Frame::Sync { changes, .. } if changes.contains(&revocation)));
    let refused = after.iter().position(|f| matches!(f, Frame::Refuse { .. }));
    assert!(
        matches!((sent, refused), (Some(s), Some(r)) if s < r),
        "{after:?}"
    );
    // Delivered in order, node 0 holds the change when it hears the refusal.
    net.heal();
    let got = net.nodes[0]
        .host
        .docs
        .get_mut(&DOCS[2])
        .map(|am| am.get_heads());
    let sent_heads = net.nodes[1]
        .host
        .docs
        .get_mut(&DOCS[2])
        .map(|am| am.get_heads());
    assert_eq!(got, sent_heads);
}

#[test]
fn honest_changes_are_canonical() {
    // The receive path refuses changes that do not re-encode to their own
    // hash; every change Automerge makes itself must pass, whatever the
    // edits (concurrent text splices with multi-byte characters, deletes,
    // map puts), or teammates would refuse each other's work.
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
    let mut a = AutoCommit::new();
    a.set_actor(automerge::ActorId::from([1u8; 16].as_slice()));
    let text = a.put_object(ROOT, "text", ObjType::Text).expect("text");
    a.commit();
    let mut b = a.fork();
    b.set_actor(automerge::ActorId::from([2u8; 16].as_slice()));
    let mut x = 7u64;
    for round in 0..200u64 {
        for doc in [&mut a, &mut b] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = doc.length(&text);
            let pos = if len == 0 {
                0
            } else {
                (x as usize) % (len + 1)
            };
            let del = if len > pos {
                (x >> 8) as usize % 3 % (len - pos + 1)
            } else {
                0
            };
            let insert = ["é", "ab", "🦀", "", "x\n"][(x >> 16) as usize % 5];
            doc.splice_text(&text, pos, del as isize, insert)
                .expect("splice");
            doc.put(ROOT, "round", round).expect("put");
            doc.commit();
        }
        if round % 7 == 0 {
            a.merge(&mut b).expect("merge");
            b.merge(&mut a).expect("merge");
        }
    }
    a.merge(&mut b).expect("merge");
    for c in a.get_changes(&[]) {
        assert!(
            super::receive::canonical(&c),
            "change {} is not canonical",
            c.hash()
        );
    }
    assert_eq!(a.text(&text).ok(), {
        b.merge(&mut a).expect("merge");
        b.text(&text).ok()
    });
}

/// A sync message as Automerge would make one for `am`, carrying `changes`
/// in its own `changes` field (as a v1 message: one chunk per change).
fn message_carrying(am: &mut AutoCommit, changes: Vec<Vec<u8>>) -> Vec<u8> {
    use automerge::sync::{ChunkList, SyncDoc};
    let mut state = automerge::sync::State::new();
    let mut msg = am
        .sync()
        .generate_sync_message(&mut state)
        .expect("a first message");
    msg.changes = ChunkList::from(changes);
    msg.encode()
}

#[test]
fn changes_inside_a_sync_message_are_refused_whole_even_with_a_genuine_signature() {
    // Node 0 may write; node 2 (not a writer) has a session with it.
    let mut net = Net::new(3, 2);
    let mut rng = SmallRng::seed_from_u64(5);
    net.connect(0, 2);
    net.heal();
    let before = net.nodes[0].host.heads();
    let rejected_before = net.nodes[0].rejected;
    // The non-writer's own change, signed by it, inside the message only;
    // then a writer's genuine change (node 1's, relayed) inside it too.
    net.nodes[2].host.edit(DOCS[0], &mut rng, 1);
    net.nodes[1].host.edit(DOCS[0], &mut rng, 2);
    let from = net.nodes[2].id;
    for author in [2, 1] {
        let host = &mut net.nodes[author].host;
        let am = host.docs.get_mut(&DOCS[0]).expect("doc");
        let change = am.get_last_local_change().expect("change").clone();
        let message = message_carrying(am, vec![change.raw_bytes().to_vec()]);
        let sig = host.sigs[&(DOCS[0], change.hash())].clone();
        net.input(
            0,
            Input::Received {
                peer: from,
                frame: Frame::Sync {
                    workspace: WS,
                    doc: DOCS[0],
                    message: Some(message),
                    changes: Vec::new(),
                    signatures: vec![sig],
                    sent_ms: 0,
                },
            },
        );
    }
    assert_eq!(net.nodes[0].host.heads(), before, "nothing applied");
    assert_eq!(net.nodes[0].rejected - rejected_before, 2, "both counted");
    // The third violation disconnects the sender.
    net.input(
        0,
        Input::Received {
            peer: from,
            frame: Frame::Sync {
                workspace: WS,
                doc: DOCS[1],
                message: Some(message_carrying(&mut AutoCommit::new(), vec![vec![1]])),
                changes: Vec::new(),
                signatures: Vec::new(),
                sent_ms: 0,
            },
        },
    );
    let node = &mut net.nodes[0];
    node.engine.handle(&mut node.host, Input::Tick, 0);
    let mut disconnected = false;
    while let Some(out) = node.engine.poll_output() {
        disconnected |= matches!(out, Output::Disconnect { peer, .. } if peer == from);
    }
    assert!(disconnected || net.nodes[0].rejected - rejected_before == 3);
}

#[test]
fn a_read_only_peer_cannot_make_a_node_create_documents() {
    let mut net = Net::new(2, 1);
    net.connect(0, 1);
    net.heal();
    // A document of the workspace node 0 does not hold yet.
    let unknown = DOCS[2];
    net.nodes[0].host.docs.remove(&unknown);
    let from = net.nodes[1].id;
    // Node 1's empty first sync message for it, with node 1 admitted by
    // node 0 as `write` says.
    let offer = |net: &mut Net, write: bool| {
        net.nodes[0]
            .engine
            .sessions
            .get_mut(&(from, WS))
            .expect("session")
            .admitted = Some(Access { read: true, write });
        let msg = message_carrying(&mut AutoCommit::new(), Vec::new());
        net.input(
            0,
            Input::Received {
                peer: from,
                frame: Frame::Sync {
                    workspace: WS,
                    doc: unknown,
                    message: Some(msg),
                    changes: Vec::new(),
                    signatures: Vec::new(),
                    sent_ms: 0,
                },
            },
        );
    };
    // From a read-only peer: not created.
    offer(&mut net, false);
    assert!(!net.nodes[0].host.docs.contains_key(&unknown));
    // From a writer it is taken (it may bring content).
    offer(&mut net, true);
    assert!(net.nodes[0].host.docs.contains_key(&unknown));
}

#[test]
fn presence_reaches_members_with_sessions_and_ends_with_the_session() {
    let mut rng = SmallRng::seed_from_u64(9);
    let mut net = Net::new(3, 3);
    net.edit(0, DOCS[0], &mut rng);
    let open = |path: &str, cursor: Option<&str>| OpenFile {
        path: path.into(),
        cursor: cursor.map(Into::into),
    };
    // Said before any session: peers hear it when their session opens.
    net.input(
        0,
        Input::Presence {
            workspace: WS,
            files: vec![open("a.py", Some("3@ab"))],
        },
    );
    net.heal();
    let zero = net.nodes[0].id;
    for i in [1, 2] {
        assert_eq!(
            net.nodes[i].presence[&zero],
            vec![open("a.py", Some("3@ab"))]
        );
    }
    // A change replaces it everywhere; saying the same again sends nothing.
    net.input(
        0,
        Input::Presence {
            workspace: WS,
            files: vec![open("b.py", None), open("a.py", Some("4@ab"))],
        },
    );
    net.heal();
    assert_eq!(net.nodes[2].presence[&zero].len(), 2);
    net.input(
        0,
        Input::Presence {
            workspace: WS,
            files: vec![open("a.py", Some("4@ab")), open("b.py", None)],
        },
    );
    assert!(net.links[&(0, 1)].is_empty(), "nothing new to say");
    // Closing everything is said too.
    net.input(
        0,
        Input::Presence {
            workspace: WS,
            files: vec![],
        },
    );
    net.heal();
    assert_eq!(net.nodes[1].presence[&zero], vec![]);
    // The word ends with the session.
    net.input(
        0,
        Input::Presence {
            workspace: WS,
            files: vec![open("c.py", None)],
        },
    );
    net.heal();
    assert!(net.nodes[1].presence.contains_key(&zero));
    net.disconnect(0, 1);
    assert!(!net.nodes[1].presence.contains_key(&zero));
}

#[test]
fn address_cards_reach_members_through_members_and_the_newest_wins() {
    use crate::card::AddressCard;
    let mut net = Net::new(3, 1);
    let two = net.nodes[2].id;
    let key = net.nodes[2].host.key.clone();
    let at = |addr: &str, ms: u64| AddressCard::sign(&key, vec![addr.to_owned()], ms);
    // Signed before any session: told when one opens. Node 2 meets only
    // node 1 (a viewer: cards are every member's); node 0 hears it from 1.
    net.input(
        2,
        Input::OwnAddresses {
            card: at("/ip4/10.0.0.3/tcp/1", 100),
        },
    );
    net.connect(1, 2);
    net.quiesce();
    assert_eq!(net.nodes[1].cards.len(), 1);
    net.connect(0, 1);
    net.quiesce();
    assert_eq!(
        net.nodes[0].cards,
        vec![(two, at("/ip4/10.0.0.3/tcp/1", 100))]
    );
    assert_eq!(
        net.nodes[0].engine.address_card(&two),
        Some(&at("/ip4/10.0.0.3/tcp/1", 100))
    );
    // Node 2 moves: the new card goes to 1, which passes it on to 0.
    net.input(
        2,
        Input::OwnAddresses {
            card: at("/ip4/192.168.9.9/tcp/2", 200),
        },
    );
    net.quiesce();
    assert_eq!(net.nodes[0].cards.len(), 2);
    assert_eq!(
        net.nodes[0].engine.address_card(&two).map(|c| c.at_ms),
        Some(200)
    );
    // An older card, replayed, changes nothing and goes nowhere.
    let one = net.nodes[1].id;
    net.input(
        0,
        Input::Received {
            peer: one,
            frame: Frame::Addresses {
                workspace: WS,
                cards: vec![at("/ip4/10.0.0.3/tcp/1", 100)],
            },
        },
    );
    assert_eq!(net.nodes[0].cards.len(), 2);
    assert!(net.links[&(0, 1)].is_empty(), "nothing passed on");
    // After a restart the kept cards are told to sessions that open.
    let mut fresh = Engine::new(Limits::default());
    let kept = net.nodes[0].engine.address_card(&two).cloned();
    fresh.handle(
        &mut net.nodes[0].host,
        Input::KnownAddresses {
            cards: kept.into_iter().collect(),
        },
        0,
    );
    assert_eq!(
        fresh.address_card(&two).map(|c| c.at_ms),
        Some(200),
        "kept cards are held again"
    );
}

#[test]
fn a_forged_card_is_a_violation_and_a_strangers_card_is_neither_kept_nor_told() {
    use crate::card::AddressCard;
    let mut net = Net::new(3, 3);
    net.heal();
    let (one, two) = (net.nodes[1].id, net.nodes[2].id);
    // Node 1 claims node 2 moved to its own address: the signature fails.
    let mut forged = AddressCard::sign(&net.nodes[2].host.key, vec!["/ip4/1.1.1.1".into()], 5);
    forged.addrs = vec!["/ip4/6.6.6.6/tcp/1".into()];
    let mut disconnected = false;
    for _ in 0..3 {
        let node = &mut net.nodes[0];
        node.engine.handle(
            &mut node.host,
            Input::Received {
                peer: one,
                frame: Frame::Addresses {
                    workspace: WS,
                    cards: vec![forged.clone()],
                },
            },
            10,
        );
        while let Some(o) = node.engine.poll_output() {
            disconnected |= matches!(o, Output::Disconnect { peer, .. } if peer == one);
            assert!(!matches!(o, Output::Event(Event::AddressCard { .. })));
        }
    }
    assert!(disconnected, "forging cards is a violation");
    assert_eq!(net.nodes[0].engine.address_card(&two), None);

    // A genuine card of someone who is no member here: not kept, not told.
    let mut net = Net::new(3, 3);
    let two = net.nodes[2].id;
    net.nodes[0].host.outsiders.push(two);
    net.nodes[1].host.outsiders.push(two);
    net.connect(0, 1);
    net.quiesce();
    let card = AddressCard::sign(&net.nodes[2].host.key, vec!["/ip4/1.1.1.1".into()], 5);
    let one = net.nodes[1].id;
    net.input(
        0,
        Input::Received {
            peer: one,
            frame: Frame::Addresses {
                workspace: WS,
                cards: vec![card],
            },
        },
    );
    assert!(net.nodes[0].cards.is_empty());
    assert_eq!(net.nodes[0].engine.address_card(&two), None);
    assert!(net.links[&(0, 1)].is_empty());
    // And cards from outside a session are a violation.
    let cards = Frame::Addresses {
        workspace: WS,
        cards: Vec::new(),
    };
    assert!(struck_outside_a_session(
        &mut net.nodes[2],
        one,
        cards,
        |o| {
            assert!(!matches!(o, Output::Event(Event::AddressCard { .. })));
        }
    ));
}

/// Every field of a member's card, attacked by the member that passes it
/// on: a card dated too far ahead is ignored without blame (clocks drift),
/// addresses that are not multiaddrs are the card's owner's own word and
/// are kept (the node dials only those that parse), and a card for another
/// workspace's session is judged by that workspace's members.
#[test]
fn cards_dated_ahead_or_holding_junk_are_handled_without_harm() {
    use crate::card::{AddressCard, MAX_CARD_CLOCK_SKEW_MS};
    let mut net = Net::new(3, 3);
    net.heal();
    let (one, two) = (net.nodes[1].id, net.nodes[2].id);
    let key = net.nodes[2].host.key.clone();
    let send = |net: &mut Net, cards: Vec<AddressCard>| {
        let node = &mut net.nodes[0];
        node.engine.handle(
            &mut node.host,
            Input::Received {
                peer: one,
                frame: Frame::Addresses {
                    workspace: WS,
                    cards,
                },
            },
            1_000,
        );
        let mut struck = false;
        while let Some(o) = node.engine.poll_output() {
            struck |= matches!(o, Output::Disconnect { .. });
        }
        struck
    };
    let ahead = AddressCard::sign(
        &key,
        vec!["/ip4/10.0.0.3".into()],
        1_000 + MAX_CARD_CLOCK_SKEW_MS + 1,
    );
    for _ in 0..3 {
        assert!(!send(&mut net, vec![ahead.clone()]), "no blame for a clock");
    }
    assert_eq!(net.nodes[0].engine.address_card(&two), None);
    let junk = AddressCard::sign(&key, vec!["not an address".into(); 16], 900);
    assert!(!send(&mut net, vec![junk.clone()]));
    assert_eq!(net.nodes[0].engine.address_card(&two), Some(&junk));
    // A workspace the session is not for: outside a session.
    let elsewhere = Frame::Addresses {
        workspace: WorkspaceId::from_bytes([9; 16]),
        cards: vec![junk],
    };
    let struck = struck_outside_a_session(&mut net.nodes[0], one, elsewhere, |_| {});
    assert!(
        struck,
        "cards for a workspace without a session are a violation"
    );
}

/// `frame`, sent three times by `stranger` (connected, no session), gets
/// it disconnected; `check` sees every output on the way.
fn struck_outside_a_session(
    node: &mut Node,
    stranger: PeerId,
    frame: Frame,
    check: impl Fn(&Output),
) -> bool {
    node.engine
        .handle(&mut node.host, Input::Connected { peer: stranger }, 0);
    while node.engine.poll_output().is_some() {}
    let mut disconnected = false;
    for _ in 0..3 {
        node.engine.handle(
            &mut node.host,
            Input::Received {
                peer: stranger,
                frame: frame.clone(),
            },
            0,
        );
        while let Some(o) = node.engine.poll_output() {
            check(&o);
            disconnected |= matches!(o, Output::Disconnect { .. });
        }
    }
    disconnected
}

#[test]
fn presence_from_outside_a_session_is_a_violation_and_never_heard() {
    let mut net = Net::new(2, 2);
    let stranger = net.nodes[1].id;
    let presence = Frame::Presence {
        workspace: WS,
        files: vec![OpenFile {
            path: "secret.py".into(),
            cursor: None,
        }],
    };
    assert!(struck_outside_a_session(
        &mut net.nodes[0],
        stranger,
        presence,
        |o| assert!(
            !matches!(o, Output::Event(Event::Presence { .. })),
            "a stranger's presence is not heard"
        )
    ));
}

/// A real bloom filter false positive: the sender's test says the peer has
/// c1 (it has not), so only c2, on top of it, is offered. The peer holds c2
/// in its pending buffer, asks for c1 by hash, gets it, and applies both.
/// Before, c2 waited until the filter happened to change (here it does once
/// B's own changes reach A; in a folder test where B sent nothing, it never
/// did and a rename never arrived: about 1 change in 100), so the test
/// checks that B asks for c1 by hash.
#[test]
fn a_dependency_the_bloom_filter_hid_is_asked_for_by_hash() {
    let mut rng = SmallRng::seed_from_u64(11);
    let mut net = Net::new(2, 2);
    net.edit(0, DOCS[0], &mut rng);
    net.heal();
    net.disconnect(0, 1);
    // Changes of B's own since the last sync fill its bloom filter.
    for _ in 0..20 {
        net.edit(1, DOCS[0], &mut rng);
    }
    let a_id = net.nodes[0].id;
    let shared = net.nodes[1]
        .host
        .states
        .get(&(a_id, DOCS[0]))
        .and_then(|b| automerge::sync::State::decode(b).ok())
        .expect("saved state")
        .shared_heads;
    let b_doc = net.nodes[1].host.docs.get_mut(&DOCS[0]).expect("doc");
    let hashes: Vec<ChangeHash> = b_doc
        .get_changes(&shared)
        .iter()
        .map(|c| c.hash())
        .collect();
    assert!(hashes.len() >= 20);
    let bloom = automerge::sync::BloomFilter::from_hashes(hashes.iter());
    // A makes edits until one's hash is a false positive there (~1 in 100).
    let mut c1 = None;
    for tag in 0..20_000 {
        let before = net.nodes[0].host.docs[&DOCS[0]].clone();
        net.nodes[0].host.edit(DOCS[0], &mut rng, 1_000 + tag);
        let head = net.nodes[0].host.heads()[&DOCS[0]][0];
        if bloom.contains_hash(&head) {
            c1 = Some(head);
            break;
        }
        net.nodes[0].host.docs.insert(DOCS[0], before);
    }
    let c1 = c1.expect("a false positive within 20,000 edits");
    net.nodes[0].host.edit(DOCS[0], &mut rng, 99_999);
    net.connect(0, 1);
    // Delivered by hand, to see what B asks for.
    let mut asked = false;
    let mut steps = 0;
    loop {
        let mut any = false;
        for (a, b) in [(0, 1), (1, 0)] {
            while let Some(frame) = net.links.get_mut(&(a, b)).and_then(VecDeque::pop_front) {
                if let Frame::Sync {
                    doc,
                    message: Some(m),
                    ..
                } = &frame
                    && a == 1
                    && *doc == DOCS[0]
                {
                    let msg = automerge::sync::Message::decode(m).expect("message");
                    asked |= msg.need.contains(&c1);
                }
                let peer = net.nodes[a].id;
                net.input(b, Input::Received { peer, frame });
                any = true;
                steps += 1;
                assert!(steps < 10_000, "sync did not quiesce");
            }
        }
        if !any {
            break;
        }
    }
    assert!(asked, "B asked for the change it lacked by hash");
    assert_eq!(net.nodes[0].host.heads(), net.nodes[1].host.heads());
    assert!(
        net.nodes[1]
            .host
            .docs
            .get_mut(&DOCS[0])
            .expect("doc")
            .get_change_by_hash(&c1)
            .is_some()
    );
    assert_eq!(net.nodes[1].engine.pending_documents(), 0);
}

/// A change sent and then dropped by the receiver's pending buffer (here:
/// stripped from its frame, as if dropped) is in the sender's `sent_hashes`
/// and would never be offered again; c2, on top of it, waits until it
/// expires, and then the receiver asks the sender (Automerge's sync reset)
/// to offer again all it lacks: the document converges.
#[test]
fn a_change_the_pending_buffer_dropped_is_offered_again() {
    let mut rng = SmallRng::seed_from_u64(7);
    let mut net = Net::new(2, 2);
    net.heal();
    net.edit(0, DOCS[0], &mut rng);
    net.heal();
    // Two changes, c2 on top of c1, offered in one message.
    net.nodes[0].host.edit(DOCS[0], &mut rng, 100);
    let c1 = net.nodes[0].host.heads()[&DOCS[0]][0];
    net.nodes[0].host.edit(DOCS[0], &mut rng, 101);
    net.input(
        0,
        Input::LocalChange {
            workspace: WS,
            doc: DOCS[0],
            changes: Vec::new(),
        },
    );
    let mut dropped = 0;
    for frame in net.links.get_mut(&(0, 1)).expect("link") {
        if let Frame::Sync { changes, .. } = frame {
            let before = changes.len();
            changes
                .retain(|raw| Change::from_bytes(raw.clone()).map(|c| c.hash()).ok() != Some(c1));
            dropped += before - changes.len();
        }
    }
    assert_eq!(dropped, 1, "c1 was in the frames");
    net.heal();
    assert_ne!(net.nodes[0].host.heads(), net.nodes[1].host.heads());
    net.now += Limits::default().pending_ttl_ms + 1;
    net.input(1, Input::Tick);
    net.heal();
    assert_eq!(net.nodes[0].host.heads(), net.nodes[1].host.heads());
    assert_eq!(net.nodes[1].engine.pending_documents(), 0);
}

/// Delivers until nothing is in flight, returning the documents each
/// `Sync` frame was about, by sender.
fn heal_counting_syncs(net: &mut Net) -> Vec<(usize, DocId)> {
    let mut seen = Vec::new();
    heal_watching(net, |from, frame| {
        if let Frame::Sync { doc, .. } = frame {
            seen.push((from, *doc));
            assert!(seen.len() < 10_000, "sync did not quiesce");
        }
    });
    seen
}

/// Delivers until nothing is in flight, showing `watch` each frame (and
/// its sender) before it is delivered.
fn heal_watching(net: &mut Net, mut watch: impl FnMut(usize, &Frame)) {
    loop {
        let keys: Vec<_> = net.links.keys().copied().collect();
        let mut any = false;
        for (a, b) in keys {
            while let Some(frame) = net.links.get(&(a, b)).and_then(|q| q.front()) {
                watch(a, frame);
                net.deliver(a, b);
                any = true;
            }
        }
        if !any {
            return;
        }
    }
}

/// Delivers only the session handshake between `a` and `b` (their `Open`
/// and `Accept`); everything else in flight is dropped.
fn admit_only(net: &mut Net, a: usize, b: usize) {
    loop {
        let mut any = false;
        for (x, y) in [(a, b), (b, a)] {
            while let Some(frame) = net.links.get_mut(&(x, y)).and_then(VecDeque::pop_front) {
                if matches!(frame, Frame::Open { .. } | Frame::Accept { .. }) {
                    let peer = net.nodes[x].id;
                    net.input(y, Input::Received { peer, frame });
                    any = true;
                }
            }
        }
        if !any {
            return;
        }
    }
}

/// Two connected writers in step, node 0 having written every document.
fn two_in_step(seed: u64) -> (Net, SmallRng) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut net = Net::new(2, 2);
    net.connect(0, 1);
    for doc in DOCS {
        net.edit(0, doc, &mut rng);
    }
    net.heal();
    (net, rng)
}

#[test]
fn a_reconnect_in_step_costs_only_the_documents_that_moved() {
    let (mut net, mut rng) = two_in_step(77);
    net.disconnect(0, 1);
    // Apart, node 1 changes one document.
    net.edit(1, DOCS[1], &mut rng);
    net.connect(0, 1);
    let syncs = heal_counting_syncs(&mut net);
    assert!(
        syncs.iter().all(|(_, doc)| *doc == DOCS[1]),
        "only the document that moved is synced: {syncs:?}"
    );
    assert!(
        syncs.iter().any(|(from, _)| *from == 1),
        "the side that moved starts the exchange"
    );
    assert_eq!(net.nodes[0].host.heads(), net.nodes[1].host.heads());
    // A document that moved in the last session may be offered once more
    // (a side learns that its last change arrived only from the peer's next
    // message); after that, a reconnect sends no sync message at all, and
    // each side still knows what the other holds.
    net.disconnect(0, 1);
    net.connect(0, 1);
    let syncs = heal_counting_syncs(&mut net);
    assert!(syncs.iter().all(|(_, doc)| *doc == DOCS[1]), "{syncs:?}");
    net.disconnect(0, 1);
    net.connect(0, 1);
    assert_eq!(heal_counting_syncs(&mut net), Vec::new());
    let theirs = net.nodes[0].engine.their_heads(&net.nodes[1].id, &WS);
    for (doc, heads) in net.nodes[1].host.heads() {
        let known = theirs.iter().find(|(d, _)| *d == doc).map(|(_, h)| h);
        assert!(
            known.is_some_and(|k| heads.iter().all(|h| k.contains(h))),
            "{doc}: the restored state knows the peer's heads"
        );
    }
}

#[test]
fn a_document_born_during_a_session_travels_with_its_first_message() {
    let (mut net, mut rng) = two_in_step(9);
    // Node 0 makes a new document: the peer cannot have it, so its one
    // change goes with the first message instead of after the peer's
    // "I need it".
    net.edit(0, LATE, &mut rng);
    let first = net.links[&(0, 1)].iter().find_map(|f| match f {
        Frame::Sync { doc, changes, .. } if *doc == LATE => Some(changes.len()),
        _ => None,
    });
    assert_eq!(first, Some(1), "the first message carries the change");
    while net.deliver(0, 1) {}
    assert_eq!(
        net.nodes[1].host.heads().get(&LATE),
        net.nodes[0].host.heads().get(&LATE),
        "one trip brings it"
    );
    let syncs = heal_counting_syncs(&mut net);
    assert!(
        syncs.iter().all(|(from, _)| *from == 1),
        "only the peer's acknowledgement follows: {syncs:?}"
    );
    assert_eq!(net.nodes[0].host.heads(), net.nodes[1].host.heads());
    // Once the peer has answered, later changes follow Automerge's rules.
    net.edit(0, LATE, &mut rng);
    net.heal();
    assert_eq!(net.nodes[0].host.heads(), net.nodes[1].host.heads());
}

/// Node 0 far ahead of node 1 on `DOCS[0]` (`ahead` changes made apart).
fn one_far_behind(seed: u64, ahead: usize) -> (Net, SmallRng) {
    let (mut net, mut rng) = two_in_step(seed);
    net.disconnect(0, 1);
    for _ in 0..ahead {
        net.edit(0, DOCS[0], &mut rng);
    }
    (net, rng)
}

#[test]
fn a_peer_far_behind_catches_up_by_one_checked_chunk() {
    let (mut net, _) = one_far_behind(11, 150);
    let persists = net.nodes[1].persists;
    let mut chunks = Vec::new();
    let mut changes_sent = 0;
    net.connect(0, 1);
    heal_watching(&mut net, |from, frame| match frame {
        Frame::Chunk { doc, chunk, .. } => chunks.push((from, *doc, chunk.len())),
        Frame::Sync { changes, .. } => changes_sent += changes.len(),
        _ => {}
    });
    assert_eq!(chunks.len(), 1, "one chunk: {chunks:?}");
    assert_eq!((chunks[0].0, chunks[0].1), (0, DOCS[0]));
    assert_eq!(changes_sent, 0, "no change went one by one");
    assert_eq!(net.nodes[0].host.heads(), net.nodes[1].host.heads());
    assert_eq!(net.nodes[1].rejected, 0);
    assert_eq!(net.nodes[1].persists - persists, 1, "kept in one piece");
    assert_eq!(
        net.nodes[1].snapshots, 1,
        "the chunk replaced the copy whole"
    );
    // The chunk's signatures are kept: node 1 relays them to a third.
    let head = net.nodes[0].host.heads()[&DOCS[0]][0];
    assert!(net.nodes[1].host.sigs.contains_key(&(DOCS[0], head)));
    // After it, single edits go as changes again, both ways.
    let mut rng = SmallRng::seed_from_u64(12);
    net.edit(1, DOCS[0], &mut rng);
    net.edit(0, DOCS[0], &mut rng);
    net.heal();
    assert_eq!(net.nodes[0].host.heads(), net.nodes[1].host.heads());
}

#[test]
fn a_chunk_lacking_our_own_changes_is_taken_apart_and_every_change_checked() {
    let (mut net, mut rng) = one_far_behind(13, 150);
    // Node 1 changed the document too, apart: the chunk cannot replace it.
    net.edit(1, DOCS[0], &mut rng);
    let mut chunks = 0;
    net.connect(0, 1);
    heal_watching(&mut net, |_, frame| {
        chunks += usize::from(matches!(frame, Frame::Chunk { .. }));
    });
    assert!(chunks >= 1, "the history went as a chunk");
    assert_eq!(net.nodes[0].host.heads(), net.nodes[1].host.heads());
    assert_eq!(net.nodes[0].rejected + net.nodes[1].rejected, 0);
    assert_eq!(net.nodes[1].snapshots, 0, "applied change by change");
}

#[test]
fn a_forged_change_hidden_in_a_chunk_is_refused_and_nothing_unchecked_applies() {
    // Nodes 0 and 1 may write; node 2 may not.
    let mut net = Net::new(3, 2);
    let mut rng = SmallRng::seed_from_u64(21);
    net.edit(0, DOCS[0], &mut rng);
    net.heal();
    // Node 1 away; node 0 writes a lot, which node 2 receives.
    net.disconnect(0, 1);
    net.disconnect(1, 2);
    for _ in 0..100 {
        net.edit(0, DOCS[0], &mut rng);
    }
    net.quiesce();
    let genuine = net.nodes[0].host.heads()[&DOCS[0]][0];
    let genuine_sig = net.nodes[2].host.sigs[&(DOCS[0], genuine)].clone();
    // Node 2 adds a change of its own, validly signed by itself, and hands
    // node 1 the whole document as a chunk.
    net.nodes[2].host.put(DOCS[0], "shared", "forged".into());
    let am = net.nodes[2].host.docs.get_mut(&DOCS[0]).expect("doc");
    let forged = am.get_heads()[0];
    let chunk = am.save();
    let own_sig = net.nodes[2].host.sigs[&(DOCS[0], forged)].clone();
    net.connect(1, 2);
    admit_only(&mut net, 1, 2);
    let from = net.nodes[2].id;
    let send = |chunk: Vec<u8>, signatures: Vec<SignedHead>| Input::Received {
        peer: from,
        frame: Frame::Chunk {
            workspace: WS,
            doc: DOCS[0],
            message: None,
            chunk,
            signatures,
            sent_ms: 0,
        },
    };
    let before = net.nodes[1].host.heads();
    // Not one document (a change chunk after it would load unchecked):
    // refused whole as malformed.
    let mut two = chunk.clone();
    two.extend_from_slice(
        net.nodes[2]
            .host
            .docs
            .get_mut(&DOCS[0])
            .expect("doc")
            .get_last_local_change()
            .expect("change")
            .raw_bytes(),
    );
    net.input(1, send(two, vec![genuine_sig.clone(), own_sig.clone()]));
    assert_eq!(net.nodes[1].host.heads(), before, "nothing applied");
    // Without signatures: nothing is covered, nothing applied.
    net.input(1, send(chunk.clone(), Vec::new()));
    assert_eq!(
        net.nodes[1].host.heads(),
        before,
        "nothing unsigned applied"
    );
    // With every signature: the chunk is taken apart; node 0's changes
    // pass one by one, node 2's is refused by the write rule.
    let rejected = net.nodes[1].rejected;
    net.input(1, send(chunk, vec![genuine_sig, own_sig]));
    let am = net.nodes[1].host.docs.get_mut(&DOCS[0]).expect("doc");
    assert!(
        am.get_change_meta_by_hash(&genuine).is_some(),
        "the genuine history applied"
    );
    assert!(
        am.get_change_meta_by_hash(&forged).is_none(),
        "the forged change never applied"
    );
    assert!(net.nodes[1].rejected > rejected, "the refusal was counted");
}

/// Delivers until quiet, settling each receiver after every frame (as the
/// node's batched engine does at the end of each group).
fn heal_settling(net: &mut Net, mut watch: impl FnMut(usize, &Frame)) {
    for _ in 0..10_000 {
        let keys: Vec<_> = net.links.keys().copied().collect();
        let mut any = false;
        for (a, b) in keys {
            if let Some(frame) = net.links.get(&(a, b)).and_then(|q| q.front()) {
                watch(a, frame);
                net.deliver(a, b);
                net.settle(b);
                any = true;
            }
        }
        if !any {
            return;
        }
    }
}

/// Two viewers that only ever received node 0's documents, from it and from
/// each other, count them shared with each other too: when they reconnect
/// in step, neither sends a sync message (batched engines, as in the node).
#[test]
fn members_who_only_received_documents_resume_in_step_with_each_other() {
    let mut net = Net::new(3, 1);
    for i in 0..3 {
        net.nodes[i].engine.set_batch_applies(true);
    }
    let mut rng = SmallRng::seed_from_u64(5);
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        net.connect(a, b);
    }
    heal_settling(&mut net, |_, _| {});
    for doc in DOCS {
        net.edit(0, doc, &mut rng);
    }
    heal_settling(&mut net, |_, _| {});
    assert_eq!(net.nodes[1].host.heads(), net.nodes[0].host.heads());
    net.disconnect(1, 2);
    net.connect(1, 2);
    let mut from1 = 0;
    heal_settling(&mut net, |from, frame| {
        if from == 1 && matches!(frame, Frame::Sync { .. }) {
            from1 += 1;
        }
    });
    assert_eq!(from1, 0, "node 1 resynced with node 2");
    assert_eq!(net.nodes[1].host.heads(), net.nodes[2].host.heads());
}

/// Delivers until nothing is in flight, counting the frames with changes
/// each node received.
fn quiesce_counting_changes(net: &mut Net) -> Vec<usize> {
    let mut received = vec![0; net.nodes.len()];
    loop {
        let keys: Vec<_> = net.links.keys().copied().collect();
        let mut any = false;
        for (a, b) in keys {
            while let Some(frame) = net.links.get(&(a, b)).and_then(|q| q.front()) {
                if matches!(frame, Frame::Sync { changes, .. } if !changes.is_empty()) {
                    received[b] += 1;
                }
                net.deliver(a, b);
                any = true;
            }
        }
        if !any {
            return received;
        }
    }
}

/// A diamond: 0 - 1 - 3, 0 - 2 - 3, and 3 - 4; node 0 the only writer,
/// everyone in step.
fn diamond(seed: u64) -> (Net, SmallRng) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut net = Net::new(5, 1);
    for (a, b) in [(0, 1), (0, 2), (1, 3), (2, 3), (3, 4)] {
        net.connect(a, b);
    }
    for doc in DOCS {
        net.edit(0, doc, &mut rng);
    }
    net.quiesce();
    let h0 = net.nodes[0].host.heads();
    for i in 1..5 {
        assert_eq!(net.nodes[i].host.heads(), h0, "node {i} in step");
    }
    (net, rng)
}

#[test]
fn a_change_relayed_through_the_mesh_reaches_each_member_once() {
    let (mut net, mut rng) = diamond(31);
    net.edit(0, DOCS[0], &mut rng);
    let received = quiesce_counting_changes(&mut net);
    let h0 = net.nodes[0].host.heads();
    for i in 1..5 {
        assert_eq!(net.nodes[i].host.heads(), h0, "node {i} has the change");
    }
    // Nodes 1 and 2 both have it before node 3 does: they tell node 3 their
    // heads, node 3 asks one of them, and only that one sends it. Passed on
    // eagerly, it came from both.
    assert_eq!(
        received,
        vec![0, 1, 1, 1, 1],
        "frames with changes per node"
    );
}

#[test]
fn a_change_asked_of_a_neighbour_that_went_away_comes_from_another() {
    let (mut net, mut rng) = diamond(32);
    net.edit(0, DOCS[0], &mut rng);
    // Node 0's change reaches 1 and 2; their heads reach 3, which asks 1.
    for (a, b) in [(0, 1), (0, 2)] {
        while net.deliver(a, b) {}
    }
    for (a, b) in [(1, 3), (2, 3)] {
        while net.deliver(a, b) {}
    }
    let asked_of_1 = net.links[&(3, 1)].iter().any(|f| {
        matches!(
            f,
            Frame::Sync {
                message: Some(_),
                ..
            }
        )
    });
    assert!(asked_of_1, "node 3 asks node 1");
    // Node 1 goes away before it answers; node 2 was not asked.
    net.disconnect(1, 3);
    net.quiesce();
    let h0 = net.nodes[0].host.heads();
    assert_ne!(net.nodes[3].host.heads(), h0, "nobody has sent it yet");
    // Node 2's follow-up sends what node 3 still lacks.
    net.now += super::RELAY_LAZY_MS;
    for i in 0..5 {
        net.input(i, Input::Tick);
    }
    net.quiesce();
    for i in [3, 4] {
        assert_eq!(net.nodes[i].host.heads(), h0, "node {i} has the change");
    }
}

#[test]
fn a_member_with_sessions_pulls_announced_changes_through_them_and_dials_only_if_they_do_not_come()
{
    let mut rng = SmallRng::seed_from_u64(33);
    let mut net = Net::new(3, 3);
    let id2 = net.nodes[2].id;
    net.connect(0, 1);
    net.connect(0, 2);
    for doc in DOCS {
        net.edit(0, doc, &mut rng);
    }
    net.quiesce();
    let announce = |digest| Input::Announced {
        peer: id2,
        workspace: WS,
        digest,
    };
    // Node 2 writes; node 1, not connected to it but in session with node
    // 0, hears the announcement and does not dial: node 0 passes it on.
    net.edit(2, DOCS[1], &mut rng);
    let theirs = digest(&mut net.nodes[2].host, &WS);
    net.input(1, announce(theirs));
    net.quiesce();
    assert_eq!(net.nodes[1].host.heads(), net.nodes[2].host.heads());
    net.now += super::MESH_PULL_MS;
    net.input(1, Input::Tick);
    assert!(net.dials.is_empty(), "{:?}", net.dials);
    // Node 2 loses node 0 and writes again: nothing brings it to node 1,
    // which dials node 2 once the mesh had its time.
    net.disconnect(0, 2);
    net.edit(2, DOCS[1], &mut rng);
    let theirs = digest(&mut net.nodes[2].host, &WS);
    net.input(1, announce(theirs));
    net.input(1, Input::Tick);
    assert!(net.dials.is_empty(), "the mesh gets its time first");
    net.now += super::MESH_PULL_MS;
    net.input(1, Input::Tick);
    assert_eq!(net.dials, vec![(1, id2)]);
}
