//! The deterministic driver: a virtual clock, an ordered event queue, one
//! ordered reliable stream per connection (what Automerge sync assumes), and
//! the real `protocol::sync` engine in every member. Same scenario and seed,
//! same report, byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::rc::Rc;

use automerge::ChangeHash;
use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use xencode_protocol::api::Role;
use xencode_protocol::policy::MemberState;
use xencode_protocol::sync::{Engine, Event, Input, Limits, Output};
use xencode_protocol::wire::{self, Frame};
use xencode_protocol::{DocId, PeerId};

use crate::host::{Loose, SimHost, Team, WS};
use crate::scenario::{Layout, Scenario};
use crate::team::{TeamError, stamp, unix_ms};

/// Reconnect delay after a connection is reset or closed.
const RECONNECT_MS: u64 = 1_000;
/// Group-commit window: applied changes become durable this much later.
const COMMIT_MS: u64 = 2;
/// How often the lag is sampled and convergence checked.
const SAMPLE_MS: u64 = 100;

enum Ev {
    Deliver {
        from: usize,
        to: usize,
        conn: u64,
        frame: Frame,
    },
    Gossip {
        from: usize,
        to: usize,
        origin: usize,
        digest: [u8; 16],
    },
    Connect {
        a: usize,
        b: usize,
    },
    Edit {
        node: usize,
    },
    Tick {
        node: usize,
    },
    Commit {
        node: usize,
    },
    Partition {
        index: usize,
    },
    Heal,
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Revoke,
    Sample,
}

#[derive(Default)]
struct Link {
    up: bool,
    conn: u64,
    /// Per direction (from the lower index, from the higher): the last
    /// delivery time, so frames stay in order.
    last: [u64; 2],
}

struct Member {
    id: PeerId,
    host: SimHost,
    engine: Engine,
    alive: bool,
    commit_pending: bool,
    gossip_seen: BTreeSet<(usize, [u8; 16])>,
    messages: u64,
    bytes: u64,
    /// When this member's documents last changed.
    last_changed: u64,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    pub nodes: usize,
    pub converged: bool,
    /// From the last disturbance (last edit, heal or restart) to the last
    /// change any honest member applied (after which all heads are equal);
    /// `None` if they never became equal.
    pub convergence_ms: Option<u64>,
    pub edits: u64,
    pub messages_mean: f64,
    pub messages_max: u64,
    pub bytes_mean: f64,
    pub bytes_max: u64,
    /// Sync bytes all members sent, by what the frames carried: `changes`
    /// (frames with changes or a chunk, their signatures and sync message
    /// included), `have_need` (sync messages alone), `session` (opening,
    /// refusing, closing), `other` (presence, address cards).
    pub bytes_by_kind: BTreeMap<&'static str, u64>,
    pub gossip_messages: u64,
    pub max_lag: u64,
    pub rejected: u64,
    /// Changes honest members refused, by the engine's reason.
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    /// Attacks made, by kind (each one a change no honest member may hold,
    /// or a replayed frame).
    pub attacks: BTreeMap<&'static str, u64>,
    pub lost_unpersisted: u64,
    pub violations: Vec<String>,
    pub virtual_ms: u64,
}

impl Report {
    /// The report of a run that could not start.
    pub fn failed(sc: &Scenario, seed: u64, why: String) -> Self {
        Self {
            scenario: sc.name.clone(),
            seed,
            nodes: sc.nodes,
            converged: false,
            convergence_ms: None,
            edits: 0,
            messages_mean: 0.0,
            messages_max: 0,
            bytes_mean: 0.0,
            bytes_max: 0,
            bytes_by_kind: BTreeMap::new(),
            gossip_messages: 0,
            max_lag: 0,
            rejected: 0,
            rejected_by_reason: BTreeMap::new(),
            attacks: BTreeMap::new(),
            lost_unpersisted: 0,
            violations: vec![why],
            virtual_ms: 0,
        }
    }

    /// The report as printed: fixed order and formatting.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "scenario: {}", self.scenario);
        let _ = writeln!(s, "seed: {}", self.seed);
        let _ = writeln!(s, "nodes: {}", self.nodes);
        let _ = writeln!(s, "converged: {}", self.converged);
        let _ = match self.convergence_ms {
            Some(ms) => writeln!(s, "convergence_ms: {ms}"),
            None => writeln!(s, "convergence_ms: none"),
        };
        let _ = writeln!(s, "edits: {}", self.edits);
        let _ = writeln!(
            s,
            "messages_per_node: mean {:.1}, max {}",
            self.messages_mean, self.messages_max
        );
        let _ = writeln!(
            s,
            "bytes_per_node: mean {:.0}, max {}",
            self.bytes_mean, self.bytes_max
        );
        let _ = writeln!(s, "bytes_by_kind: {}", listing(&self.bytes_by_kind));
        let _ = writeln!(s, "gossip_messages: {}", self.gossip_messages);
        let _ = writeln!(s, "max_lag_changes: {}", self.max_lag);
        let _ = writeln!(s, "rejected_changes: {}", self.rejected);
        if !self.rejected_by_reason.is_empty() {
            let _ = writeln!(
                s,
                "rejected_by_reason: {}",
                listing(&self.rejected_by_reason)
            );
        }
        if !self.attacks.is_empty() {
            let _ = writeln!(s, "attacks: {}", listing(&self.attacks));
        }
        let _ = writeln!(
            s,
            "applied_changes_lost_in_crashes: {}",
            self.lost_unpersisted
        );
        let _ = writeln!(s, "virtual_ms: {}", self.virtual_ms);
        if self.violations.is_empty() {
            let _ = writeln!(s, "invariants: ok");
        } else {
            for v in &self.violations {
                let _ = writeln!(s, "VIOLATION: {v}");
            }
        }
        s
    }
}

/// What a frame carries, for [`Report::bytes_by_kind`].
fn kind(frame: &Frame) -> &'static str {
    match frame {
        Frame::Sync { changes, .. } if !changes.is_empty() => "changes",
        Frame::Chunk { .. } => "changes",
        Frame::Sync { .. } => "have_need",
        Frame::Open { .. } | Frame::Accept { .. } | Frame::Refuse { .. } | Frame::Close { .. } => {
            "session"
        }
        Frame::Presence { .. } | Frame::Addresses { .. } => "other",
    }
}

/// `a 1, b 2`, in key order.
fn listing(counts: &BTreeMap<&'static str, u64>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One simulation run.
pub struct Sim {
    sc: Scenario,
    seed: u64,
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    members: Vec<Member>,
    team: Rc<Team>,
    layout: Layout,
    mesh: Vec<(usize, usize)>,
    links: BTreeMap<(usize, usize), Link>,
    group: Option<Vec<u8>>,
    /// Changes every honest node must end up with, by document.
    required: BTreeMap<DocId, Vec<ChangeHash>>,
    /// Changes no honest node may hold.
    forbidden: Vec<(DocId, ChangeHash)>,
    edits: u64,
    gossip: u64,
    bytes_by_kind: BTreeMap<&'static str, u64>,
    rejected: u64,
    rejected_by_reason: BTreeMap<&'static str, u64>,
    attacks: BTreeMap<&'static str, u64>,
    lost: u64,
    max_lag: u64,
    quiet_from: u64,
    /// The last edit, heal or restart.
    last_disturbance: u64,
    converged_at: Option<u64>,
    /// Frames a malicious member received, to replay.
    replayable: Vec<(usize, Frame)>,
}

impl Sim {
    /// A run of `sc` with `seed`: the team made as the node makes one
    /// (`crate::team`), the events planned.
    pub fn new(sc: Scenario, seed: u64) -> Result<Self, TeamError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = sc.nodes;
        // Keys (and their peer ids) from the seed; a key whose peer id cannot
        // be made (none is known) is drawn again.
        let mut keys: Vec<SigningKey> = Vec::with_capacity(n);
        let mut peers: Vec<PeerId> = Vec::with_capacity(n);
        while keys.len() < n {
            let mut k = [0u8; 32];
            rng.fill_bytes(&mut k);
            let key = SigningKey::from_bytes(&k);
            if let Ok(peer) = xencode_protocol::ids::peer_id_of(&key.verifying_key().to_bytes()) {
                keys.push(key);
                peers.push(peer);
            }
        }
        let layout = sc.layout();
        let roles = (0..n).map(|i| layout.role(i)).collect();
        let expires = (0..n)
            .map(|i| layout.is_expired(i).then(|| unix_ms(sc.expire_at_ms)))
            .collect();
        let team = Rc::new(Team::new(&keys, roles, expires, sc.docs, &mut rng)?);
        let members = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| Member {
                id: peers[i],
                host: SimHost::new(i, key, team.clone()),
                engine: Engine::batched(Limits::default()),
                alive: true,
                commit_pending: false,
                gossip_seen: BTreeSet::new(),
                messages: 0,
                bytes: 0,
                last_changed: 0,
            })
            .collect();
        let mut sim = Self {
            seed,
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            members,
            team,
            layout,
            mesh: Vec::new(),
            links: BTreeMap::new(),
            group: None,
            required: BTreeMap::new(),
            forbidden: Vec::new(),
            edits: 0,
            gossip: 0,
            bytes_by_kind: BTreeMap::new(),
            rejected: 0,
            rejected_by_reason: BTreeMap::new(),
            attacks: BTreeMap::new(),
            lost: 0,
            max_lag: 0,
            quiet_from: 0,
            last_disturbance: 0,
            converged_at: None,
            replayable: Vec::new(),
            sc,
        };
        sim.plan();
        Ok(sim)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.rng.next_u64() % n }
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.rng.next_u64() as f64 / u64::MAX as f64) < p
    }

    fn at(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((time, self.seq), ev);
    }

    /// The mesh, the edits, the disturbances.
    fn plan(&mut self) {
        let n = self.sc.nodes;
        let degree = self.sc.degree.min(n - 1);
        let mut mesh = BTreeSet::new();
        for i in 0..n {
            let mut picked = 0;
            let mut tries = 0;
            while picked < degree && tries < degree * 20 {
                tries += 1;
                let j = self.below(n as u64) as usize;
                if j != i && mesh.insert((i.min(j), i.max(j))) {
                    picked += 1;
                }
            }
        }
        self.mesh = mesh.into_iter().collect();
        for (a, b) in self.mesh.clone() {
            let t = self.latency();
            self.at(t, Ev::Connect { a, b });
        }
        let writers = n - self.sc.viewers;
        let active = self.sc.active_writers.unwrap_or(writers).min(writers);
        for node in 0..active {
            let t = self.below(self.sc.edit_interval_ms);
            self.at(t, Ev::Edit { node });
        }
        for node in 0..n {
            let t = 1 + self.below(1000);
            self.at(t, Ev::Tick { node });
        }
        let mut quiet = self.sc.edit_for_ms;
        for (index, p) in self.sc.partitions.clone().into_iter().enumerate() {
            self.at(p.at_ms, Ev::Partition { index });
            self.at(p.heal_ms, Ev::Heal);
            quiet = quiet.max(p.heal_ms);
        }
        let mut crashes: Vec<(usize, u64, u64)> = self
            .sc
            .crashes
            .iter()
            .map(|c| (c.node, c.at_ms, c.restart_ms))
            .collect();
        if let Some(r) = self.sc.rolling_crashes.clone() {
            let mut t = r.from_ms;
            let mut node = 0;
            while t < r.until_ms {
                crashes.push((node % n, t, t + r.down_ms));
                node += 1;
                t += r.every_ms.max(1);
            }
        }
        for (node, at, restart) in crashes {
            self.at(at, Ev::Crash { node });
            self.at(restart, Ev::Restart { node });
            quiet = quiet.max(restart);
        }
        if self.sc.revoked > 0 {
            self.at(self.sc.revoke_at_ms, Ev::Revoke);
        }
        self.quiet_from = quiet;
        self.at(SAMPLE_MS, Ev::Sample);
    }

    fn latency(&mut self) -> u64 {
        self.sc.latency_ms + self.below(self.sc.jitter_ms + 1)
    }

    fn same_side(&self, a: usize, b: usize) -> bool {
        self.group.as_ref().is_none_or(|g| g[a] == g[b])
    }

    /// Runs to convergence after the last disturbance, or to the settle
    /// deadline.
    pub fn run(mut self) -> Report {
        self.advance();
        self.report()
    }

    /// Processes events until convergence after the last disturbance, or
    /// the deadline.
    fn advance(&mut self) {
        let deadline = self.quiet_from + self.sc.settle_ms;
        while let Some(((time, _), ev)) = self.queue.pop_first() {
            if time > deadline {
                self.now = deadline;
                break;
            }
            self.now = time;
            self.step(ev);
            if self.converged_at.is_some() {
                break;
            }
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                from,
                to,
                conn,
                frame,
            } => {
                let live = self
                    .links
                    .get(&(from.min(to), from.max(to)))
                    .is_some_and(|l| l.up && l.conn == conn);
                if live && self.members[to].alive {
                    if self.sc.malicious > 0 && self.is_malicious(to) && self.replayable.len() < 32
                    {
                        self.replayable.push((from, frame.clone()));
                    }
                    let peer = self.members[from].id;
                    self.input(to, Input::Received { peer, frame });
                }
            }
            Ev::Gossip {
                from,
                to,
                origin,
                digest,
            } => {
                if !self.members[to].alive || !self.same_side(from, to) {
                    return;
                }
                if !self.members[to].gossip_seen.insert((origin, digest)) {
                    return;
                }
                let peer = self.members[origin].id;
                self.input(
                    to,
                    Input::Announced {
                        peer,
                        workspace: WS,
                        digest,
                    },
                );
                self.forward_gossip(to, Some(from), origin, digest);
            }
            Ev::Connect { a, b } => self.connect(a, b),
            Ev::Edit { node } => self.edit(node),
            Ev::Tick { node } => {
                if self.members[node].alive {
                    self.input(node, Input::Tick);
                    // As the node does periodically: sessions whose token
                    // expired or was revoked are closed.
                    self.revalidate(node);
                }
                self.at(self.now + 1000, Ev::Tick { node });
            }
            Ev::Commit { node } => {
                self.members[node].commit_pending = false;
                if self.members[node].alive {
                    self.members[node].host.commit();
                }
            }
            Ev::Partition { index } => {
                let p = self.sc.partitions[index].clone();
                let n = self.sc.nodes;
                self.group = Some(
                    (0..n)
                        .map(|i| match p.kind.as_str() {
                            "isolate" => u8::from(i == p.node),
                            _ => u8::from(i >= n / 2),
                        })
                        .collect(),
                );
                let cut: Vec<(usize, usize)> = self
                    .links
                    .iter()
                    .filter(|((a, b), l)| l.up && !self.same_side(*a, *b))
                    .map(|(k, _)| *k)
                    .collect();
                for (a, b) in cut {
                    self.link_down(a, b);
                }
            }
            Ev::Heal => {
                self.group = None;
                self.last_disturbance = self.now;
                for (a, b) in self.mesh.clone() {
                    let t = self.now + self.latency();
                    self.at(t, Ev::Connect { a, b });
                }
            }
            Ev::Crash { node } => {
                if !self.members[node].alive {
                    return;
                }
                self.members[node].alive = false;
                let links: Vec<(usize, usize)> = self
                    .links
                    .iter()
                    .filter(|((a, b), l)| l.up && (*a == node || *b == node))
                    .map(|(k, _)| *k)
                    .collect();
                for (a, b) in links {
                    self.link_down(a, b);
                }
                let m = &mut self.members[node];
                self.lost += m.host.crash();
                m.engine = Engine::batched(Limits::default());
                m.gossip_seen.clear();
            }
            Ev::Restart { node } => {
                self.members[node].alive = true;
                self.last_disturbance = self.now;
                for (a, b) in self.mesh.clone() {
                    if a == node || b == node {
                        let t = self.now + self.latency();
                        self.at(t, Ev::Connect { a, b });
                    }
                }
            }
            Ev::Revoke => self.revoke(),
            Ev::Sample => self.sample(),
        }
    }

    fn is_malicious(&self, i: usize) -> bool {
        self.layout.is_malicious(i)
    }

    fn is_revoked(&self, i: usize) -> bool {
        self.layout.is_revoked(i)
    }

    /// The root (member 0) revokes the revoked members in the access
    /// document, as `xencode revoke` does; members close their sessions
    /// with them as the revocation reaches them.
    fn revoke(&mut self) {
        if !self.members[0].alive {
            self.at(self.now + SAMPLE_MS, Ev::Revoke);
            return;
        }
        let now = self.now;
        for i in self.layout.revoked() {
            let target = self.team.peers[i].to_string();
            if let Some(hash) = self.members[0].host.revoke(&target, now) {
                self.required
                    .entry(self.team.access)
                    .or_default()
                    .push(hash);
            }
        }
        self.last_disturbance = now;
        self.members[0].last_changed = now;
        let access = self.team.access;
        self.input(
            0,
            Input::LocalChange {
                workspace: WS,
                doc: access,
                changes: Vec::new(),
            },
        );
        self.revalidate(0);
    }

    /// Re-checks member `i`'s sessions (`Engine::revalidate`).
    fn revalidate(&mut self, i: usize) {
        let now = self.now;
        let m = &mut self.members[i];
        m.engine.revalidate(&mut m.host, unix_ms(now));
        self.drain(i);
    }

    fn connect(&mut self, a: usize, b: usize) {
        if !self.members[a].alive || !self.members[b].alive || !self.same_side(a, b) {
            return;
        }
        let key = (a.min(b), a.max(b));
        let link = self.links.entry(key).or_default();
        if link.up {
            return;
        }
        link.up = true;
        link.conn += 1;
        let (pa, pb) = (self.members[a].id, self.members[b].id);
        self.input(a, Input::Connected { peer: pb });
        self.input(b, Input::Connected { peer: pa });
    }

    fn link_down(&mut self, a: usize, b: usize) {
        let key = (a.min(b), a.max(b));
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        if !link.up {
            return;
        }
        link.up = false;
        let (pa, pb) = (self.members[a].id, self.members[b].id);
        if self.members[a].alive {
            self.input(a, Input::Disconnected { peer: pb });
        }
        if self.members[b].alive {
            self.input(b, Input::Disconnected { peer: pa });
        }
    }

    fn edit(&mut self, node: usize) {
        if self.now >= self.sc.edit_for_ms {
            return;
        }
        let next =
            self.now + self.sc.edit_interval_ms / 2 + self.below(self.sc.edit_interval_ms + 1);
        self.at(next, Ev::Edit { node });
        if !self.members[node].alive {
            return;
        }
        let k = self.below(self.team.docs.len() as u64) as usize;
        let doc = self.team.docs[k];
        let now = self.now;
        // Revoked and expired members run tampered nodes that keep writing;
        // everyone else's node refuses its user's write without the right.
        let tampered = self.is_revoked(node) || self.layout.is_expired(node);
        if !tampered && !self.members[node].host.may_edit(now) {
            return;
        }
        let Some(loose) = self.members[node].host.edit(doc, now) else {
            return;
        };
        let hash = loose.hash;
        self.edits += 1;
        self.last_disturbance = now;
        self.members[node].last_changed = now;
        if self.is_revoked(node) {
            // Once its author has seen its revocation, it cites it.
            if self.members[node].host.own_state() == MemberState::Revoked {
                self.forbid("revoked_member_write", doc, hash);
            }
        } else if self.layout.is_expired(node) {
            if self.past_expiry(node, now) {
                self.forbid("expired_member_write", doc, hash);
            }
        } else if !self.is_malicious(node) {
            // A malicious member's own edits are valid, but its neighbours
            // cut it off for its attacks, so they may never spread.
            self.required.entry(doc).or_default().push(hash);
        }
        // The node gives the engine its change, as the real node does.
        let changes = automerge::Change::from_bytes(loose.raw)
            .into_iter()
            .collect();
        self.input(
            node,
            Input::LocalChange {
                workspace: WS,
                doc,
                changes,
            },
        );
        if self.is_malicious(node) {
            self.misbehave(node, doc);
        }
    }

    /// Whether a change member `i` stamps at `now` is after its membership
    /// ended, as the write rule reads it (the change's own timestamp, in
    /// seconds, against the expiry recorded for it).
    fn past_expiry(&self, i: usize, now: u64) -> bool {
        self.team.expires[i]
            .is_some_and(|e| stamp(now) > i64::try_from(e / 1000).unwrap_or(i64::MAX))
    }

    /// A change no honest member may ever hold, made by an attack of `kind`.
    fn forbid(&mut self, kind: &'static str, doc: DocId, hash: ChangeHash) {
        self.forbidden.push((doc, hash));
        *self.attacks.entry(kind).or_default() += 1;
    }

    /// Member `node` sends `loose` (a change of `doc`) to its neighbours
    /// as a relayed change with its signature: an attack of `kind`.
    fn relay(&mut self, node: usize, kind: &'static str, doc: DocId, loose: Loose) {
        self.forbid(kind, doc, loose.hash);
        let frame = Frame::Sync {
            workspace: WS,
            doc,
            message: None,
            changes: vec![loose.raw],
            signatures: vec![loose.signature],
            sent_ms: self.now,
        };
        self.broadcast(node, frame);
    }

    fn broadcast(&mut self, node: usize, frame: Frame) {
        for to in self.neighbours(node) {
            self.send(node, to, frame.clone());
        }
    }

    /// A malicious member (an admin or a developer of the workspace) tries,
    /// at each of its edits, every way a real one could get a change past
    /// the write rule, and sends each to its neighbours:
    ///
    /// - a change made under a teammate's actor id, signed by this member
    ///   (no signature ever covers it), and one whose signature claims the
    ///   teammate's key;
    /// - its own change only inside an Automerge sync message, where
    ///   Automerge would apply it unchecked;
    /// - a viewer's change (signed by the viewer), relayed;
    /// - an access-document change revoking the workspace's root;
    /// - an expired member's change stamped after its membership ended,
    ///   relayed;
    /// - a revoked member's change citing its revocation, relayed;
    /// - a frame it received earlier, replayed.
    fn misbehave(&mut self, node: usize, doc: DocId) {
        let now = self.now;
        let victim = (node + 1) % self.layout.writers;
        if let Some(loose) = self.members[node].host.forge(doc, now, victim) {
            self.relay(node, "stolen_actor_id", doc, loose);
        }
        if let Some(mut loose) = self.members[node].host.forge(doc, now, victim) {
            // Claiming the teammate's key outright: the signature fails.
            loose.signature.author = self.team.keys[victim];
            self.relay(node, "forged_signature", doc, loose);
        }
        if let Some(loose) = self.members[node].host.loose_edit(doc, now)
            && let Some(message) = self.members[node]
                .host
                .message_carrying(doc, vec![loose.raw.clone()])
        {
            self.forbid("change_in_sync_message", doc, loose.hash);
            let frame = Frame::Sync {
                workspace: WS,
                doc,
                message: Some(message),
                changes: Vec::new(),
                signatures: vec![loose.signature],
                sent_ms: now,
            };
            self.broadcast(node, frame);
        }
        if let Some(viewer) = self.layout.viewers().next()
            && let Some(loose) = self.members[viewer].host.loose_edit(doc, now)
        {
            self.relay(node, "viewer_write_relayed", doc, loose);
        }
        let access = self.team.access;
        let root = self.team.peers[0].to_string();
        if let Some(loose) = self.members[node].host.loose_revocation(&root, now) {
            self.relay(node, "root_revocation", access, loose);
        }
        for e in self.layout.expired() {
            if self.past_expiry(e, now)
                && let Some(loose) = self.members[e].host.loose_edit(doc, now)
            {
                self.relay(node, "expired_member_write_relayed", doc, loose);
            }
        }
        for r in self.layout.revoked() {
            if self.members[r].host.own_state() == MemberState::Revoked
                && let Some(loose) = self.members[r].host.loose_edit(doc, now)
            {
                self.relay(node, "revoked_member_write_relayed", doc, loose);
            }
        }
        if !self.replayable.is_empty() {
            let k = self.below(self.replayable.len() as u64) as usize;
            let (_, old) = self.replayable[k].clone();
            if let Some(to) = self.neighbours(node).first().copied() {
                *self.attacks.entry("replayed_frame").or_default() += 1;
                self.send(node, to, old);
            }
        }
    }

    fn neighbours(&self, node: usize) -> Vec<usize> {
        self.links
            .iter()
            .filter(|(_, l)| l.up)
            .filter_map(|((a, b), _)| {
                if *a == node {
                    Some(*b)
                } else if *b == node {
                    Some(*a)
                } else {
                    None
                }
            })
            .collect()
    }

    fn send(&mut self, from: usize, to: usize, frame: Frame) {
        let key = (from.min(to), from.max(to));
        let Some(link) = self.links.get(&key) else {
            return;
        };
        if !link.up {
            return;
        }
        let bytes = wire::encode(&frame).map_or(0, |b| b.len() as u64);
        *self.bytes_by_kind.entry(kind(&frame)).or_default() += bytes;
        let m = &mut self.members[from];
        m.messages += 1;
        m.bytes += bytes;
        let mut delay = self.latency();
        if self.chance(self.sc.loss) {
            if self.chance(self.sc.reset_on_loss) {
                self.link_down(from, to);
                let t = self.now + RECONNECT_MS;
                self.at(t, Ev::Connect { a: from, b: to });
                return;
            }
            delay += self.sc.retransmit_ms;
        }
        let dir = usize::from(from > to);
        let Some(link) = self.links.get_mut(&key) else {
            return;
        };
        let t = (self.now + delay).max(link.last[dir]);
        link.last[dir] = t;
        let conn = link.conn;
        self.at(
            t,
            Ev::Deliver {
                from,
                to,
                conn,
                frame,
            },
        );
    }

    fn forward_gossip(
        &mut self,
        node: usize,
        except: Option<usize>,
        origin: usize,
        digest: [u8; 16],
    ) {
        for to in self.neighbours(node) {
            if Some(to) == except {
                continue;
            }
            self.gossip += 1;
            let t = self.now + self.latency();
            self.at(
                t,
                Ev::Gossip {
                    from: node,
                    to,
                    origin,
                    digest,
                },
            );
        }
    }

    fn input(&mut self, i: usize, input: Input) {
        let now = self.now;
        let m = &mut self.members[i];
        m.engine.handle(&mut m.host, input, unix_ms(now));
        // The node settles at the end of each command group; here every
        // input is its own group.
        m.engine.settle(&mut m.host, unix_ms(now));
        self.drain(i);
    }

    /// Carries out everything the engine asks, until it asks nothing. A
    /// member that applied a change to the access document re-checks its
    /// sessions (a revocation may have reached it), as the node does.
    fn drain(&mut self, i: usize) {
        loop {
            let access_changed = self.drain_once(i);
            if !access_changed || !self.members[i].alive {
                return;
            }
            let now = self.now;
            let m = &mut self.members[i];
            m.engine.revalidate(&mut m.host, unix_ms(now));
        }
    }

    /// [`Self::drain`] once; returns whether the access document changed.
    fn drain_once(&mut self, i: usize) -> bool {
        let mut access_changed = false;
        while let Some(out) = self.members[i].engine.poll_output() {
            match out {
                Output::Send { peer, frame } => {
                    if let Some(&to) = self.team.by_peer.get(&peer) {
                        self.send(i, to, frame);
                    }
                }
                Output::Persist {
                    doc,
                    changes,
                    signatures,
                    ..
                } => {
                    access_changed |= doc == self.team.access;
                    self.members[i].host.stage(doc, changes, signatures);
                    self.members[i].last_changed = self.now;
                    if !self.members[i].commit_pending {
                        self.members[i].commit_pending = true;
                        self.at(self.now + COMMIT_MS, Ev::Commit { node: i });
                    }
                }
                Output::Snapshot {
                    doc,
                    saved,
                    signatures,
                    ..
                } => {
                    self.members[i].host.stage_snapshot(doc, saved, signatures);
                    self.members[i].last_changed = self.now;
                    if !self.members[i].commit_pending {
                        self.members[i].commit_pending = true;
                        self.at(self.now + COMMIT_MS, Ev::Commit { node: i });
                    }
                }
                Output::SaveSyncState { peer, doc, state } => {
                    self.members[i].host.save_state(peer, doc, state);
                }
                Output::Disconnect { peer, .. } => {
                    if let Some(&to) = self.team.by_peer.get(&peer) {
                        self.link_down(i, to);
                        let t = self.now + RECONNECT_MS * 5;
                        self.at(t, Ev::Connect { a: i, b: to });
                    }
                }
                Output::Announce { digest, .. } => {
                    self.members[i].gossip_seen.insert((i, digest));
                    self.forward_gossip(i, None, i, digest);
                }
                Output::Dial { peer } => {
                    if let Some(&to) = self.team.by_peer.get(&peer) {
                        let t = self.now + self.latency();
                        self.at(t, Ev::Connect { a: i, b: to });
                    }
                }
                Output::Event(Event::Rejected { count, reason, .. }) => {
                    self.rejected += count as u64;
                    *self.rejected_by_reason.entry(reason.as_str()).or_default() += count as u64;
                }
                Output::Event(_) => {}
            }
        }
        access_changed
    }

    /// Members whose convergence the invariants require: neither revoked
    /// nor malicious. A malicious member replays frames it captured —
    /// other members' `Open`s with their tokens among them — so its
    /// neighbours strike it and cut it off as a real node does, and
    /// replaying their own sync messages back to them skews what they
    /// believe it holds: its copy may lag, the team's may not.
    fn honest(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.layout.is_honest(*i))
            .collect()
    }

    fn sample(&mut self) {
        let access = self.team.access;
        let required: u64 = self
            .required
            .iter()
            .filter(|(d, _)| **d != access)
            .map(|(_, v)| v.len() as u64)
            .sum();
        for i in self.honest() {
            if self.members[i].alive {
                let lag = required.saturating_sub(self.members[i].host.held);
                self.max_lag = self.max_lag.max(lag);
            }
        }
        if self.now >= self.quiet_from && self.converged() {
            self.converged_at = Some(self.now);
            return;
        }
        self.at(self.now + SAMPLE_MS, Ev::Sample);
    }

    fn converged(&mut self) -> bool {
        let honest = self.honest();
        if honest
            .iter()
            .any(|i| !self.members[*i].alive || self.members[*i].host.has_staged())
        {
            return false;
        }
        let mut first = None;
        for i in honest {
            let heads = self.members[i].host.heads();
            match &first {
                None => first = Some(heads),
                Some(f) if *f != heads => return false,
                Some(_) => {}
            }
        }
        true
    }

    fn report(mut self) -> Report {
        let honest = self.honest();
        let mut violations = Vec::new();
        let converged = self.converged_at.is_some() || self.converged();
        if !converged {
            violations.push("honest nodes did not reach identical heads".into());
        }
        // No persisted change lost: every honest author's change, and every
        // change durable anywhere, is held by every honest node.
        let mut must: BTreeSet<(DocId, ChangeHash)> = self
            .required
            .iter()
            .flat_map(|(d, hs)| hs.iter().map(move |h| (*d, *h)))
            .collect();
        let docs = self.team.docs.clone();
        for &i in &honest {
            for h in self.members[i].host.durable_hashes() {
                for d in &docs {
                    if self.members[i].host.holds(*d, &h) {
                        must.insert((*d, h));
                    }
                }
            }
        }
        let forbidden = self.forbidden.clone();
        for &i in &honest {
            let host = &mut self.members[i].host;
            let missing = must.iter().filter(|(d, h)| !host.holds(*d, h)).count();
            if missing > 0 {
                violations.push(format!("node {i} lacks {missing} persisted changes"));
            }
            let bad = forbidden.iter().filter(|(d, h)| host.holds(*d, h)).count();
            if bad > 0 {
                violations.push(format!("node {i} applied {bad} unauthorized changes"));
            }
            // The access document is one only admins wrote.
            let not_admins = host
                .access_authors()
                .iter()
                .filter(|a| {
                    self.team
                        .by_actor
                        .get(a)
                        .is_none_or(|j| self.team.roles[*j] != Role::Admin)
                })
                .count();
            if not_admins > 0 {
                violations.push(format!(
                    "node {i}'s access document holds {not_admins} changes by non-admins"
                ));
            }
        }
        let n = self.members.len() as f64;
        let messages: Vec<u64> = self.members.iter().map(|m| m.messages).collect();
        let bytes: Vec<u64> = self.members.iter().map(|m| m.bytes).collect();
        Report {
            scenario: self.sc.name.clone(),
            seed: self.seed,
            nodes: self.sc.nodes,
            converged,
            // The last moment an honest member's documents changed, after
            // the last disturbance: when the team reached its final state.
            convergence_ms: converged.then(|| {
                honest
                    .iter()
                    .map(|i| self.members[*i].last_changed)
                    .max()
                    .unwrap_or(0)
                    .saturating_sub(self.last_disturbance)
            }),
            edits: self.edits,
            messages_mean: messages.iter().sum::<u64>() as f64 / n,
            messages_max: messages.iter().copied().max().unwrap_or(0),
            bytes_mean: bytes.iter().sum::<u64>() as f64 / n,
            bytes_max: bytes.iter().copied().max().unwrap_or(0),
            bytes_by_kind: self.bytes_by_kind.clone(),
            gossip_messages: self.gossip,
            max_lag: self.max_lag,
            rejected: self.rejected,
            rejected_by_reason: self.rejected_by_reason.clone(),
            attacks: self.attacks.clone(),
            lost_unpersisted: self.lost,
            violations,
            virtual_ms: self.now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Scenario {
        toml::from_str(
            "name = \"t\"\nnodes = 4\ndegree = 2\ndocs = 1\nedit_for_ms = 3000\nedit_interval_ms = 500\nsettle_ms = 30000\n",
        )
        .expect("scenario")
    }

    /// The checker itself: a change every member holds, declared forbidden,
    /// and one nobody holds, declared required, are both reported.
    #[test]
    fn the_invariant_checks_can_fail() {
        let mut sim = Sim::new(small(), 5).expect("team");
        sim.advance();
        let (doc, held) = sim
            .required
            .iter()
            .find_map(|(d, hs)| hs.first().map(|h| (*d, *h)))
            .expect("an edit was made");
        sim.forbidden.push((doc, held));
        sim.required
            .entry(doc)
            .or_default()
            .push(ChangeHash([9; 32]));
        let report = sim.report();
        let text = report.violations.join("\n");
        assert!(text.contains("applied 1 unauthorized changes"), "{text}");
        assert!(text.contains("lacks 1 persisted changes"), "{text}");
    }

    /// With the write rule switched off, the attacks get through, and the
    /// invariants say so: the unauthorized changes applied, and the access
    /// document written by non-admins.
    #[test]
    fn the_invariants_catch_a_broken_write_rule() {
        let sc: Scenario = toml::from_str(
            "name = \"t\"\nnodes = 6\ndegree = 2\ndocs = 1\nviewers = 1\nmalicious = 2\nedit_for_ms = 3000\nedit_interval_ms = 500\nsettle_ms = 30000\n",
        )
        .expect("scenario");
        let mut sim = Sim::new(sc, 3).expect("team");
        for m in &mut sim.members {
            m.host.rule_disabled = true;
        }
        let text = sim.run().violations.join("\n");
        assert!(text.contains("unauthorized changes"), "{text}");
        assert!(text.contains("changes by non-admins"), "{text}");
    }

    #[test]
    fn a_healthy_small_team_converges_with_no_violation() {
        let report = Sim::new(small(), 5).expect("team").run();
        assert!(
            report.converged && report.violations.is_empty(),
            "{}",
            report.render()
        );
        assert!(report.edits > 10);
    }
}
