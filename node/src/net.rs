//! The libp2p adapter: a thin layer between the swarm and the sync engine
//! that runs in the store actor. Swarm events become engine inputs
//! ([`Store::net_input`]); the engine's sends arrive as [`NetCommand`]s.
//! Nothing about what to sync is decided here.
//!
//! Transports: TCP and QUIC, noise, yamux, and circuits through relays.
//! Behaviours: identify, ping, mDNS (optional), connection limits,
//! gossipsub (announcements only, with peer scoring), `/xencode/sync/2`
//! (request-response with [`codec::FrameCodec`]), and for members behind
//! NATs circuit relay v2 (served with `relay = true`, members only) and
//! DCUtR hole punching ([`reach`]). Frames to one peer are sent one at a time — the
//! next only after the previous was acknowledged — so a session's stream
//! stays ordered, as Automerge sync requires.
//!
//! Gossip carries no workspace content: a workspace's topic name is a keyed
//! hash of its id, and a message is a 16-byte digest of the announcer's
//! heads ([`wire::Announcement`]). What to do about one is the engine's call
//! ([`Input::Announced`]).

pub(crate) mod codec;
mod lookup;
pub mod reach;
mod throttle;

use codec::RawFrame;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::core::Transport as _;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, autonat, connection_limits, dcutr, gossipsub, identify, kad,
    mdns, noise, ping, quic, relay, tcp, yamux,
};
use tokio::sync::{mpsc, watch};
use xencode_protocol::WorkspaceId;
use xencode_protocol::sync::Input;
use xencode_protocol::wire::{self, Announcement, MAX_ANNOUNCEMENT_BYTES, SYNC_PROTOCOL};

use crate::config::RelayLimits;
use crate::metrics::Metrics;
use crate::store::{NetCommand, Store, StoreStats};
use reach::{Link, Links, RelayService, Reservations};

/// Frames queued for one peer before it is considered too slow.
const MAX_QUEUED_FRAMES: usize = 4096;
/// Inbound frames per peer per second before it is disconnected.
const MAX_FRAMES_PER_SEC: u32 = 5000;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("the identity key does not make a libp2p key: {0}")]
    Key(String),
    #[error("cannot set up the {0} transport: {1}")]
    Transport(&'static str, String),
    #[error("cannot listen on {addr}: {error}. Pick another with --listen")]
    Listen { addr: String, error: String },
    #[error("{0:?} is not a multiaddr")]
    Addr(String),
    #[error("cannot set up circuit relays: {0}")]
    Relay(String),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    limits: connection_limits::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
    gossip: gossipsub::Behaviour,
    sync: request_response::Behaviour<codec::FrameCodec>,
    relay: Toggle<relay::Behaviour>,
    relay_client: relay::client::Behaviour,
    dcutr: dcutr::Behaviour,
    autonat: autonat::Behaviour,
    kad: Toggle<lookup::MembersOnly<kad::Behaviour<kad::store::MemoryStore>>>,
}

/// Gossipsub for announcements: signed messages, validated by us before they
/// are forwarded, tiny, with peer scoring on.
fn gossip_behaviour(
    key: &libp2p::identity::Keypair,
) -> Result<gossipsub::Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let config = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(Duration::from_secs(1))
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(MAX_ANNOUNCEMENT_BYTES * 16)
        .build()?;
    let mut gossip =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), config)?;
    gossip.with_peer_score(
        gossipsub::PeerScoreParams::default(),
        gossipsub::PeerScoreThresholds::default(),
    )?;
    Ok(gossip)
}

/// Scoring of an announcement topic. Announcements are sparse, so a peer is
/// not penalised for delivering few (P3 off); invalid messages cost a lot:
/// four put a peer below the graylist threshold.
fn topic_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 100.0,
        first_message_deliveries_weight: 1.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.5,
        ..gossipsub::TopicScoreParams::default()
    }
}

/// What the network shares with the API.
#[derive(Debug, Default)]
pub struct NetInfo {
    /// Addresses this node listens on, circuit addresses through relays
    /// included.
    pub listen: RwLock<Vec<String>>,
    /// How each connected peer's best connection runs.
    pub links: RwLock<HashMap<PeerId, Link>>,
    /// Whether peers can dial this node (AutoNAT).
    pub reachability: RwLock<xencode_protocol::api::Reachability>,
    /// Notified when a listen address is added (the start waits for the
    /// first before it says where it listens).
    pub bound: tokio::sync::Notify,
}

impl NetInfo {
    /// Where peers can reach this node now: its listen addresses, each
    /// ending in `/p2p/<id>` (what invitations and address cards carry).
    pub fn advertised(&self, id: &str) -> Vec<String> {
        let listen = self.listen.read().map(|l| l.clone()).unwrap_or_default();
        advertised(&listen, id)
    }
}

/// Options of the network task.
#[derive(Debug, Clone)]
pub struct NetOptions {
    pub listen: Vec<String>,
    pub peers: Vec<String>,
    pub mdns: bool,
    /// Serve circuit relay v2 to members.
    pub relay: bool,
    /// Relays to hold reservations on (multiaddrs ending in `/p2p/<id>`).
    pub relays: Vec<String>,
    pub relay_limits: RelayLimits,
    /// Look members up by peer id (Kademlia among members).
    pub lookup: bool,
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<Vec<u8>>,
    in_flight: Option<OutboundRequestId>,
}

struct Redial {
    addrs: Vec<Multiaddr>,
    backoff: Duration,
    next: Instant,
}

struct RateWindow {
    started: Instant,
    frames: u32,
}

/// The running network task.
pub struct Net {
    swarm: libp2p::Swarm<Behaviour>,
    store: Store,
    metrics: Arc<Metrics>,
    info: Arc<NetInfo>,
    outboxes: HashMap<PeerId, Outbox>,
    /// Known peers to keep connected to (inviters, members).
    redial: HashMap<PeerId, Redial>,
    /// `--peer` addresses whose peer id is not known until connected.
    bootstrap: Vec<(Multiaddr, Duration, Instant)>,
    rates: HashMap<PeerId, RateWindow>,
    /// Gossip topics followed, and their workspaces.
    topics: HashMap<gossipsub::TopicHash, WorkspaceId>,
    /// The store's published figures: who is a member, for the relay.
    stats: Arc<StoreStats>,
    /// What this node's relay holds (when it relays).
    relay_service: RelayService,
    /// Reservations this node keeps on relays.
    reservations: Reservations,
    /// How each connection runs.
    links: Links,
    /// Every configured listen address is a loopback one.
    loopback_only: bool,
    /// Peers to try hole punching with again, on a new relayed connection.
    punch_retries: reach::PunchRetries,
    /// Lookups of members no address reached: running ones, and when each
    /// member was last looked up.
    lookups: HashMap<kad::QueryId, PeerId>,
    looked_up: HashMap<PeerId, Instant>,
    /// When to sign a new address card: a moment after the listen
    /// addresses last changed, so a burst of changes makes one card.
    card_due: Option<Instant>,
}

/// Addresses a node advertises, each ending in `/p2p/<id>`: its listen
/// addresses (circuit ones end in its id already; other `/p2p/` parts name
/// the relay).
fn advertised(listen: &[String], id: &str) -> Vec<String> {
    listen
        .iter()
        .map(|a| {
            if a.ends_with(&format!("/p2p/{id}")) {
                a.clone()
            } else {
                format!("{a}/p2p/{id}")
            }
        })
        .collect()
}

/// Addresses remembered per peer at most (the newest first).
const MAX_PEER_ADDRS: usize = 16;
/// Least time between two lookups of one member.
const LOOKUP_EVERY: Duration = Duration::from_secs(30);
/// Wait after the listen addresses change before a new card is signed.
const CARD_SETTLE: Duration = Duration::from_secs(2);

impl Net {
    /// Builds the swarm and starts listening.
    pub fn new(
        secret: [u8; 32],
        options: &NetOptions,
        store: Store,
        metrics: Arc<Metrics>,
        info: Arc<NetInfo>,
    ) -> Result<Self, NetError> {
        let stats = store.shared_stats();
        let mut secret = secret;
        let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)
            .map_err(|e| NetError::Key(e.to_string()))?;
        let local = keypair.public().to_peer_id();
        let use_mdns = options.mdns;
        let relay_server = options
            .relay
            .then(|| reach::server(local, &options.relay_limits, &stats));
        let mut relays = Vec::new();
        for addr in &options.relays {
            relays.push(
                addr.parse::<Multiaddr>()
                    .map_err(|_| NetError::Addr(addr.clone()))?,
            );
        }
        // Circuits through this node's relay draw from one bucket.
        let bucket = options
            .relay
            .then(|| throttle::Bucket::new(options.relay_limits.max_bytes_per_sec, metrics.clone()))
            .flatten();
        let kad_stats = stats.clone();
        let use_lookup = options.lookup;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_other_transport(|key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                let paced = bucket.clone();
                let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                    .upgrade(libp2p::core::upgrade::Version::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default())
                    .map(move |(peer, muxer), _| {
                        (peer, StreamMuxerBox::new(throttle::Throttled::new(muxer, paced.clone())))
                    });
                let paced = bucket.clone();
                let quic = quic::tokio::Transport::new(quic::Config::new(key)).map(
                    move |(peer, conn), _| {
                        (peer, StreamMuxerBox::new(throttle::Throttled::new(conn, paced.clone())))
                    },
                );
                Ok(tcp.or_transport(quic).map(|either, _| either.into_inner()))
            })
            .map_err(|e| NetError::Transport("TCP and QUIC", e.to_string()))?
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| NetError::Relay(e.to_string()))?
            .with_behaviour(|key, relay_client| -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
                let mdns = if use_mdns {
                    match mdns::tokio::Behaviour::new(mdns::Config::default(), local) {
                        Ok(m) => Some(m),
                        Err(e) => {
                            tracing::warn!(error = %e, "mDNS unavailable; discover peers with --peer");
                            None
                        }
                    }
                } else {
                    None
                };
                Ok(Behaviour {
                    limits: connection_limits::Behaviour::new(
                        connection_limits::ConnectionLimits::default()
                            .with_max_established(Some(256))
                            // Two peers dialling each other at once, a
                            // relayed connection and the direct one hole
                            // punching makes beside it, and AutoNAT's
                            // dial-backs (a probe every 30 s until sure; each
                            // stays until the idle timeout). With 3, the
                            // second probe between two teammates on a LAN
                            // was refused and each then called the other's
                            // reachable node `private`.
                            .with_max_established_per_peer(Some(6))
                            .with_max_pending_incoming(Some(64))
                            .with_max_pending_outgoing(Some(64)),
                    ),
                    identify: identify::Behaviour::new(identify::Config::new(
                        "/xencode/id/1".into(),
                        key.public(),
                    )),
                    ping: ping::Behaviour::new(ping::Config::new()),
                    mdns: Toggle::from(mdns),
                    gossip: gossip_behaviour(key)?,
                    sync: request_response::Behaviour::with_codec(
                        codec::FrameCodec,
                        [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
                        request_response::Config::default()
                            .with_request_timeout(Duration::from_secs(60))
                            .with_max_concurrent_streams(64),
                    ),
                    relay: Toggle::from(relay_server),
                    relay_client,
                    dcutr: dcutr::Behaviour::new(local),
                    autonat: autonat::Behaviour::new(local, reach::autonat_config()),
                    kad: Toggle::from(use_lookup.then(|| {
                        lookup::MembersOnly::new(lookup::kademlia(local), kad_stats.clone())
                    })),
                })
            })
            .map_err(|e| NetError::Transport("behaviour", e.to_string()))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        for addr in &options.listen {
            let ma: Multiaddr = addr.parse().map_err(|_| NetError::Addr(addr.clone()))?;
            swarm.listen_on(ma).map_err(|e| NetError::Listen {
                addr: addr.clone(),
                error: format!("{e:?}"),
            })?;
        }
        let loopback_only = options
            .listen
            .iter()
            .filter_map(|a| a.parse::<Multiaddr>().ok())
            .all(|a| is_loopback(&a));
        let now = Instant::now();
        let mut bootstrap = Vec::new();
        for addr in &options.peers {
            let ma: Multiaddr = addr.parse().map_err(|_| NetError::Addr(addr.clone()))?;
            bootstrap.push((ma, Duration::from_secs(1), now));
        }
        Ok(Self {
            swarm,
            store,
            metrics,
            info,
            outboxes: HashMap::new(),
            redial: HashMap::new(),
            bootstrap,
            rates: HashMap::new(),
            topics: HashMap::new(),
            stats,
            relay_service: RelayService::default(),
            reservations: Reservations::configured(&relays),
            links: Links::default(),
            loopback_only,
            punch_retries: reach::PunchRetries::default(),
            card_due: None,
            lookups: HashMap::new(),
            looked_up: HashMap::new(),
        })
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<NetCommand>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        if let Ok(contacts) = self.store.contacts().await {
            for (peer, addrs) in contacts {
                self.remember(&peer, &addrs);
            }
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(cmd) = commands.recv() => self.command(cmd),
                event = self.swarm.select_next_some() => self.event(event).await,
                _ = tick.tick() => {
                    let _ = self.store.net_input(Input::Tick).await;
                    self.redial_due();
                    self.reach_tick();
                    self.sign_card_if_due().await;
                }
            }
        }
        tracing::info!("network stopped");
    }

    fn remember(&mut self, peer: &str, addrs: &[String]) {
        let Ok(peer) = peer.parse::<PeerId>() else {
            return;
        };
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        let addrs: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
        let entry = self.redial.entry(peer).or_insert_with(|| Redial {
            addrs: Vec::new(),
            backoff: Duration::from_secs(1),
            next: Instant::now(),
        });
        for a in addrs {
            if !entry.addrs.contains(&a) {
                entry.addrs.push(a);
            }
        }
        if entry.addrs.len() > MAX_PEER_ADDRS {
            let extra = entry.addrs.len() - MAX_PEER_ADDRS;
            entry.addrs.drain(..extra);
        }
    }

    /// A member's signed card says where it is now: those addresses come
    /// first (older ones stay behind them, within the bound), and a member
    /// not connected is dialled at once.
    fn moved(&mut self, peer: PeerId, addrs: &[String]) {
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        let mut fresh: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
        let entry = self.redial.entry(peer).or_insert_with(|| Redial {
            addrs: Vec::new(),
            backoff: Duration::from_secs(1),
            next: Instant::now(),
        });
        for a in entry.addrs.drain(..) {
            if !fresh.contains(&a) {
                fresh.push(a);
            }
        }
        fresh.truncate(MAX_PEER_ADDRS);
        entry.addrs = fresh;
        entry.backoff = Duration::from_secs(1);
        entry.next = Instant::now() + entry.backoff;
        if !self.swarm.is_connected(&peer) {
            self.dial(peer);
        }
    }

    /// Asks the members this node is connected to where `peer`, a member
    /// whose every known address failed twice, is now (at most every 30 s).
    fn look_up(&mut self, peer: PeerId) {
        let now = Instant::now();
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        if !kad.is_member(&peer)
            || self
                .looked_up
                .get(&peer)
                .is_some_and(|at| now.duration_since(*at) < LOOKUP_EVERY)
        {
            return;
        }
        tracing::info!(%peer, "no known address of this member answers; looking it up");
        let id = kad.inner().get_closest_peers(peer);
        self.lookups.insert(id, peer);
        self.looked_up.insert(peer, now);
        if self.looked_up.len() > 4096 {
            self.looked_up
                .retain(|_, at| now.duration_since(*at) < LOOKUP_EVERY);
        }
    }

    /// A lookup progressed: the member's addresses, if a teammate knew them.
    fn looked_up(
        &mut self,
        id: kad::QueryId,
        result: Result<kad::GetClosestPeersOk, kad::GetClosestPeersError>,
        last: bool,
    ) {
        let Some(target) = self.lookups.get(&id).copied() else {
            return;
        };
        let peers = match result {
            Ok(ok) => ok.peers,
            Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
        };
        let addrs: Vec<String> = peers
            .iter()
            .filter(|p| p.peer_id == target)
            .flat_map(|p| p.addrs.iter().map(ToString::to_string))
            .collect();
        if !addrs.is_empty() {
            tracing::info!(peer = %target, ?addrs, "a member looked up by peer id");
            self.metrics.peer_lookup("found");
            self.lookups.remove(&id);
            self.moved(target, &addrs);
        } else if last {
            self.lookups.remove(&id);
            self.metrics
                .peer_lookup(if self.swarm.is_connected(&target) {
                    "found"
                } else {
                    "not_found"
                });
        }
    }

    /// Signs a new address card once the listen addresses settled.
    async fn sign_card_if_due(&mut self) {
        if self.card_due.is_none_or(|due| due > Instant::now()) {
            return;
        }
        self.card_due = None;
        let addrs = self
            .info
            .advertised(&self.swarm.local_peer_id().to_string());
        if let Err(e) = self.store.own_addresses(addrs).await {
            tracing::debug!(error = %e, "no new address card: the store is closed");
        }
    }

    fn command(&mut self, cmd: NetCommand) {
        match cmd {
            NetCommand::Send { peer, frame } => match wire::encode(&frame) {
                Ok(bytes) => {
                    let outbox = self.outboxes.entry(peer).or_default();
                    if outbox.queue.len() >= MAX_QUEUED_FRAMES {
                        tracing::warn!(%peer, "peer is not keeping up; disconnecting to resync later");
                        self.outboxes.remove(&peer);
                        let _ = self.swarm.disconnect_peer_id(peer);
                        return;
                    }
                    outbox.queue.push_back(bytes);
                    self.pump(peer);
                }
                Err(e) => tracing::error!(error = %e, "a frame could not be encoded"),
            },
            NetCommand::Disconnect { peer, reason } => {
                tracing::info!(%peer, %reason, "disconnecting");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            NetCommand::Subscribe { workspace } => {
                let topic = gossipsub::IdentTopic::new(workspace.topic());
                let gossip = &mut self.swarm.behaviour_mut().gossip;
                if let Err(e) = gossip.set_topic_params(topic.clone(), topic_params()) {
                    tracing::warn!(error = e, "gossip topic scoring not set");
                }
                match gossip.subscribe(&topic) {
                    Ok(_) => {
                        self.topics.insert(topic.hash(), workspace);
                    }
                    Err(e) => {
                        tracing::warn!(%workspace, error = %e, "cannot follow the workspace's gossip topic")
                    }
                }
            }
            NetCommand::Announce { workspace, digest } => {
                let topic = gossipsub::IdentTopic::new(workspace.topic());
                let data = wire::encode_announcement(&Announcement { digest });
                match self.swarm.behaviour_mut().gossip.publish(topic, data) {
                    Ok(_) => self.metrics.gossip("out", "published"),
                    // Alone in the topic: sessions carry everything anyway.
                    Err(e) => {
                        tracing::debug!(%workspace, error = %e, "announcement not published");
                        self.metrics.gossip("out", "unpublished");
                    }
                }
            }
            NetCommand::SetBootstrap { addrs } => {
                let now = Instant::now();
                let wanted: Vec<Multiaddr> = addrs.iter().filter_map(|a| a.parse().ok()).collect();
                self.bootstrap.retain(|(a, _, _)| wanted.contains(a));
                for addr in wanted {
                    if !self.bootstrap.iter().any(|(a, _, _)| *a == addr) {
                        tracing::info!(%addr, "a peer added by a config reload; dialing it");
                        self.bootstrap.push((addr, Duration::from_secs(1), now));
                    }
                }
                self.redial_due();
            }
            NetCommand::Moved { peer, addrs } => self.moved(peer, &addrs),
            NetCommand::Dial { peer, addrs } => {
                self.remember(&peer.to_string(), &addrs);
                if !self.swarm.is_connected(&peer) {
                    self.dial(peer);
                }
            }
        }
    }

    fn dial(&mut self, peer: PeerId) {
        let Some(r) = self.redial.get(&peer) else {
            return;
        };
        // libp2p dials a peer's addresses at once and gives up on all of
        // them when one answers with another peer id: a teammate's
        // `127.0.0.1` or `192.168.1.2` names another machine here. So an
        // address whose first hop is one this node listens on itself (a
        // peer's, or a relay's in a circuit address) is never dialled, and
        // circuits through relays are a dial of their own, which such a
        // collision among the direct ones cannot abort.
        let own: Vec<Multiaddr> = self.swarm.listeners().cloned().collect();
        let (circuits, direct): (Vec<Multiaddr>, Vec<Multiaddr>) = r
            .addrs
            .iter()
            .filter(|a| !own.contains(&transport_of(a)))
            .cloned()
            .partition(|a| reach::relay_of(a).is_some());
        for (addrs, condition) in [
            (direct, PeerCondition::DisconnectedAndNotDialing),
            // Dialled only when not connected (`redial_due`, `Dial`), so
            // beside the direct dial, not after it.
            (circuits, PeerCondition::Always),
        ] {
            if addrs.is_empty() {
                continue;
            }
            let opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(condition)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                tracing::debug!(%peer, error = %e, "dial not started");
            }
        }
    }

    /// A relay identified itself: the peers reached through it that are
    /// not connected are dialled now, not at their next redial.
    fn dial_through(&mut self, relay: PeerId) {
        let waiting: Vec<PeerId> = self
            .redial
            .iter()
            .filter(|(p, r)| {
                !self.swarm.is_connected(p)
                    && r.addrs.iter().any(|a| reach::relay_of(a) == Some(relay))
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in waiting {
            self.dial(peer);
        }
    }

    fn redial_due(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .redial
            .iter()
            .filter(|(p, r)| r.next <= now && !self.swarm.is_connected(p))
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            let mut failed_twice = false;
            if let Some(r) = self.redial.get_mut(&peer) {
                failed_twice = r.backoff >= Duration::from_secs(4);
                r.next = now + r.backoff;
                r.backoff = (r.backoff * 2).min(MAX_BACKOFF);
            }
            self.dial(peer);
            if failed_twice {
                self.look_up(peer);
            }
        }
        let mut dials = Vec::new();
        for (addr, backoff, next) in &mut self.bootstrap {
            if *next <= now {
                *next = now + *backoff;
                *backoff = (*backoff * 2).min(MAX_BACKOFF);
                dials.push(addr.clone());
            }
        }
        for addr in dials {
            // Skip addresses of peers we are connected to already (the
            // last peer id: in a circuit address the first is the relay's).
            let known = addr
                .iter()
                .filter_map(|p| match p {
                    Protocol::P2p(id) => Some(id),
                    _ => None,
                })
                .last();
            if known.is_some_and(|id| self.swarm.is_connected(&id)) {
                continue;
            }
            if let Err(e) = self.swarm.dial(addr.clone()) {
                tracing::debug!(%addr, error = %e, "dial not started");
            }
        }
    }

    /// Sends the next queued frame to `peer` if none is in flight.
    fn pump(&mut self, peer: PeerId) {
        if !self.swarm.is_connected(&peer) {
            return;
        }
        let relayed = self.relayed(&peer);
        let Some(outbox) = self.outboxes.get_mut(&peer) else {
            return;
        };
        if outbox.in_flight.is_some() {
            return;
        }
        // As many queued frames as one request carries, in order.
        let mut batch = Vec::new();
        let mut total = 0;
        while let Some(next) = outbox.queue.front() {
            if !batch.is_empty()
                && (batch.len() >= codec::MAX_BATCH_FRAMES
                    || total + next.len() > wire::MAX_FRAME_BYTES)
            {
                break;
            }
            total += next.len();
            if let Some(bytes) = outbox.queue.pop_front() {
                self.metrics.sync_frame("out", bytes.len());
                batch.push(bytes);
            }
        }

        if !batch.is_empty() {
            if relayed {
                self.metrics.relayed("out", total);
            }
            outbox.in_flight = Some(
                self.swarm
                    .behaviour_mut()
                    .sync
                    .send_request(&peer, RawFrame::Frames(batch)),
            );
        }
    }

    async fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                let relayed = reach::relay_of(&address).is_some();
                if relayed {
                    tracing::info!(%address, "reachable through a relay");
                } else {
                    tracing::info!(%address, "listening");
                }
                // A relay tells the peers it serves where it is: not at
                // loopback addresses, unless it listens on nothing else.
                if !relayed
                    && self.swarm.behaviour().relay.is_enabled()
                    && (self.loopback_only || !is_loopback(&address))
                {
                    self.swarm.add_external_address(address.clone());
                }
                if let Ok(mut l) = self.info.listen.write() {
                    l.push(address.to_string());
                }
                self.info.bound.notify_one();
                self.card_due = Some(Instant::now() + CARD_SETTLE);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "no longer listening");
                let address = address.to_string();
                if let Ok(mut l) = self.info.listen.write() {
                    l.retain(|a| *a != address);
                }
                self.card_due = Some(Instant::now() + CARD_SETTLE);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                tracing::debug!(?listener_id, ?reason, "listener closed");
                self.reservations.closed(listener_id);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let addr = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address.clone(),
                    // An inbound circuit: its local address names the relay.
                    ConnectedPoint::Listener { local_addr, .. }
                        if reach::relay_of(local_addr).is_some() =>
                    {
                        local_addr.clone()
                    }
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr.clone(),
                };
                self.links.opened(peer_id, connection_id, &addr);
                self.publish_links();
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    // A bootstrap address answered: keep that peer connected.
                    let bare = without_peer(address);
                    self.bootstrap.retain(|(a, _, _)| without_peer(a) != bare);
                    self.remember(&peer_id.to_string(), &[address.to_string()]);
                }
                if let Some(r) = self.redial.get_mut(&peer_id) {
                    r.backoff = Duration::from_secs(1);
                }
                let _ = self.store.peer_address(peer_id, addr.to_string()).await;
                if num_established.get() == 1 {
                    // Frames queued for an earlier connection belong to
                    // sessions that are gone.
                    self.outboxes.remove(&peer_id);
                    self.metrics
                        .peers_connected(self.swarm.connected_peers().count());
                    let _ = self
                        .store
                        .net_input(Input::Connected { peer: peer_id })
                        .await;
                    self.pump(peer_id);
                }
            }
            SwarmEvent::ConnectionClosed {
                connection_id,
                num_established,
                ..
            } if num_established > 0 => {
                self.links.closed(connection_id);
                self.publish_links();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                ..
            } => {
                self.links.closed(connection_id);
                self.publish_links();
                self.outboxes.remove(&peer_id);
                self.rates.remove(&peer_id);
                self.metrics
                    .peers_connected(self.swarm.connected_peers().count());
                let _ = self
                    .store
                    .net_input(Input::Disconnected { peer: peer_id })
                    .await;
                if let Some(r) = self.redial.get_mut(&peer_id) {
                    r.next = Instant::now() + r.backoff;
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, %error, "outgoing connection failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Sync(e)) => self.sync_event(e).await,
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            })) => {
                self.announcement(propagation_source, message_id, message)
                    .await
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                connection_id,
                info,
            })) => {
                self.maybe_reserve_on(peer_id, connection_id, &info);
                // Identify told this node its observed address too, which
                // hole punching over a circuit needs: now dial through it.
                self.dial_through(peer_id);
                // Where the peer listens: redial it there if the connection drops.
                let addrs: Vec<String> = info
                    .listen_addrs
                    .iter()
                    .filter(|a| {
                        !a.iter()
                            .any(|p| matches!(p, Protocol::Ip4(ip) if ip.is_unspecified()))
                    })
                    .take(16)
                    .map(ToString::to_string)
                    .collect();
                self.remember(&peer_id.to_string(), &addrs);
                // A member goes in the lookup table, where it is reachable.
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
                    && kad.carries(&peer_id)
                {
                    for addr in info.listen_addrs.iter().take(16) {
                        kad.inner().add_address(&peer_id, addr.clone());
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetClosestPeers(result),
                step,
                ..
            })) => self.looked_up(id, result, step.last),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(e)) => {
                if let Some((kind, outcome)) = self.relay_service.event(&e) {
                    self.metrics.relay_request(kind, outcome);
                }
                let (reservations, circuits) = self.relay_service.counts();
                self.metrics.relay_state(reservations, circuits);
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                relay::client::Event::ReservationReqAccepted {
                    relay_peer_id,
                    renewal,
                    ..
                },
            )) => {
                if !renewal {
                    tracing::info!(relay = %relay_peer_id, "reservation accepted: members can reach this node through the relay");
                }
                self.reservations.accepted(&relay_peer_id);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => {
                    tracing::info!(peer = %remote_peer_id, "hole punched: a direct connection replaces the relayed one");
                    self.metrics.hole_punch("success");
                    self.links.hole_punched(remote_peer_id);
                    self.publish_links();
                    self.punch_retries.remove(&remote_peer_id);
                }
                Err(e) => {
                    tracing::info!(peer = %remote_peer_id, error = %e, "hole punching failed; staying relayed");
                    self.metrics.hole_punch("failure");
                    self.punch_retries.failed(remote_peer_id, Instant::now());
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => {
                let reachability = reach::reachability(&new);
                tracing::info!(?reachability, status = ?new, "reachability (AutoNAT)");
                if let Ok(mut r) = self.info.reachability.write() {
                    *r = reachability;
                }
                for listener in self.reservations.reachable(new.is_public()) {
                    self.swarm.remove_listener(listener);
                }
                self.reach_tick();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                connection,
                result: Ok(rtt),
                ..
            })) => {
                self.links.rtt(connection, rtt);
                self.publish_links();
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(found))) => {
                let me = *self.swarm.local_peer_id();
                for (peer, addr) in found {
                    // Only the lower peer id dials, so two nodes never dial
                    // each other at the same time.
                    if me < peer && !self.swarm.is_connected(&peer) {
                        tracing::info!(%peer, %addr, "discovered on the LAN");
                        self.remember(&peer.to_string(), &[addr.to_string()]);
                        self.dial(peer);
                    }
                }
            }
            _ => {}
        }
    }

    async fn sync_event(&mut self, event: request_response::Event<RawFrame, ()>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, ());
                    let frames = match request {
                        RawFrame::Frames(frames) => frames,
                        RawFrame::Oversize(len) => {
                            self.metrics.peer_violation("malformed_frame");
                            let error = format!(
                                "a request of {len} bytes exceeds the limits ({} bytes, {} frames)",
                                wire::MAX_FRAME_BYTES,
                                codec::MAX_BATCH_FRAMES
                            );
                            let _ = self.store.net_input(Input::Malformed { peer, error }).await;
                            return;
                        }
                    };
                    for request in frames {
                        // The rate limit counts frames, batched or not.
                        if self.over_rate(peer) {
                            tracing::warn!(%peer, "peer exceeds the frame rate limit; disconnecting");
                            self.metrics.peer_violation("rate_limit");
                            let _ = self.swarm.disconnect_peer_id(peer);
                            return;
                        }
                        self.metrics.sync_frame("in", request.len());
                        if self.relayed(&peer) {
                            self.metrics.relayed("in", request.len());
                        }
                        let input = match wire::decode(&request) {
                            Ok(frame) => {
                                // Tokens are verified here, never on the
                                // store's thread (see `store::tokens`).
                                if self.store.verify_token(&frame, crate::now_ms()).await
                                    == Some(false)
                                {
                                    self.metrics.peer_violation("bad_token");
                                }
                                Input::Received { peer, frame }
                            }
                            Err(e) => {
                                self.metrics.peer_violation("malformed_frame");
                                Input::Malformed {
                                    peer,
                                    error: e.to_string(),
                                }
                            }
                        };
                        let _ = self.store.net_input(input).await;
                    }
                }
                request_response::Message::Response { request_id, .. } => {
                    if let Some(o) = self.outboxes.get_mut(&peer)
                        && o.in_flight == Some(request_id)
                    {
                        o.in_flight = None;
                    }
                    self.pump(peer);
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(%peer, %error, "a frame was not delivered; resetting the connection");
                if let Some(o) = self.outboxes.get_mut(&peer)
                    && o.in_flight == Some(request_id)
                {
                    o.in_flight = None;
                }
                // The session's stream lost a frame: start it afresh.
                self.outboxes.remove(&peer);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "an inbound frame failed");
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.metrics.peer_violation("malformed_frame");
                }
                let _ = self
                    .store
                    .net_input(Input::Malformed {
                        peer,
                        error: error.to_string(),
                    })
                    .await;
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    /// Validates a gossip message before gossipsub forwards it, and hands a
    /// valid announcement to the engine.
    async fn announcement(
        &mut self,
        via: PeerId,
        id: gossipsub::MessageId,
        message: gossipsub::Message,
    ) {
        let workspace = self.topics.get(&message.topic).copied();
        let decoded = wire::decode_announcement(&message.data);
        let acceptance = match (workspace, decoded, message.source) {
            (Some(workspace), Ok(a), Some(source)) => {
                self.metrics.gossip("in", "accepted");
                let input = Input::Announced {
                    peer: source,
                    workspace,
                    digest: a.digest,
                };
                let _ = self.store.net_input(input).await;
                gossipsub::MessageAcceptance::Accept
            }
            // A topic we left meanwhile: neither good nor bad.
            (None, _, _) => gossipsub::MessageAcceptance::Ignore,
            (Some(_), _, _) => {
                tracing::debug!(%via, "malformed announcement; penalising the peer");
                self.metrics.gossip("in", "rejected");
                self.metrics.peer_violation("bad_announcement");
                gossipsub::MessageAcceptance::Reject
            }
        };
        self.swarm
            .behaviour_mut()
            .gossip
            .report_message_validation_result(&id, &via, acceptance);
    }

    /// Whether `peer`'s best connection runs through a relay.
    fn relayed(&self, peer: &PeerId) -> bool {
        self.info
            .links
            .read()
            .is_ok_and(|l| l.get(peer).is_some_and(|l| l.relay.is_some()))
    }

    fn publish_links(&self) {
        if let Ok(mut shared) = self.info.links.write() {
            *shared = self.links.best();
        }
    }

    /// A peer identified itself: if it is a member that relays, keep a
    /// reservation on it so that members can reach this node through it.
    fn maybe_reserve_on(
        &mut self,
        peer: PeerId,
        connection: libp2p::swarm::ConnectionId,
        info: &identify::Info,
    ) {
        if self.reservations.knows(&peer) || !info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
            return;
        }
        let Some(seen_at) = self.links.remote(connection) else {
            return;
        };
        if reach::relay_of(&seen_at).is_some() {
            return;
        }
        if let Some(addr) = reach::relay_address(peer, &info.listen_addrs, &seen_at) {
            let quic = reach::quic_address(peer, &info.listen_addrs, &seen_at);
            self.reservations.candidate(peer, addr, quic);
            self.reach_tick();
        }
    }

    /// Once a second: ask relays for reservations that are due, and cut
    /// what the relay holds for peers that are no longer members.
    fn reach_tick(&mut self) {
        let members = self
            .stats
            .members
            .read()
            .map(|m| m.clone())
            .unwrap_or_default();
        for (relay, quic) in self.reservations.promote(&members) {
            if let Some(quic) = quic.filter(|_| !self.links.over_quic(&relay)) {
                let opts = DialOpts::peer_id(relay)
                    .addresses(vec![quic])
                    .condition(PeerCondition::Always)
                    .build();
                if let Err(e) = self.swarm.dial(opts) {
                    tracing::debug!(%relay, error = %e, "no QUIC connection to the relay");
                }
            }
        }
        for (relay, addr) in self.reservations.due(Instant::now()) {
            match self.swarm.listen_on(addr.clone()) {
                Ok(listener) => self.reservations.listening(relay, listener),
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot ask the relay for a reservation")
                }
            }
        }
        // Hole punching runs when a relayed connection opens; one that
        // failed (say, before this node knew its own observed address) is
        // tried again on a new one, while the peer is still only relayed.
        for peer in self.punch_retries.due(Instant::now()) {
            let relayed = self.links.relayed_connections(&peer);
            if relayed.is_empty()
                || self
                    .links
                    .best()
                    .get(&peer)
                    .is_some_and(|l| l.relay.is_none())
            {
                continue;
            }
            tracing::info!(%peer, "trying hole punching again on a new relayed connection");
            for connection in relayed {
                self.swarm.close_connection(connection);
            }
            self.dial(peer);
        }
        for listener in self.reservations.forget_strangers(&members) {
            self.swarm.remove_listener(listener);
        }
        if self.swarm.behaviour().relay.is_enabled() {
            for peer in self.relay_service.strangers(&members) {
                tracing::info!(%peer, "no longer a member: its relay reservation and circuits are cut");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
        // A connection opened while its peer was a member carries the
        // members' Kademlia; once the peer is not one, it is closed (a new
        // connection gets no Kademlia).
        let lapsed = self
            .swarm
            .behaviour()
            .kad
            .as_ref()
            .map(|k| k.lapsed(&members))
            .unwrap_or_default();
        for peer in lapsed {
            tracing::info!(%peer, "no longer a member: its connections, which carry the members' lookups, are closed");
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn over_rate(&mut self, peer: PeerId) -> bool {
        let now = Instant::now();
        let w = self.rates.entry(peer).or_insert(RateWindow {
            started: now,
            frames: 0,
        });
        if now.duration_since(w.started) >= Duration::from_secs(1) {
            w.started = now;
            w.frames = 0;
        }
        w.frames += 1;
        w.frames > MAX_FRAMES_PER_SEC
    }
}

/// Where `addr` first goes: its protocols before any `/p2p/<id>` or
/// `/p2p-circuit` (for a circuit address, the relay's transport address).
fn transport_of(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .take_while(|p| !matches!(p, Protocol::P2p(_) | Protocol::P2pCircuit))
        .collect()
}

/// `addr` without its `/p2p/<id>` parts.
fn without_peer(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

/// Whether `addr` is on a loopback interface.
fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_first_goes_to_its_transport_part() {
        let relay = PeerId::random();
        let peer = PeerId::random();
        let circuit: Multiaddr =
            format!("/ip4/127.0.0.1/tcp/7421/p2p/{relay}/p2p-circuit/p2p/{peer}")
                .parse()
                .expect("addr");
        assert_eq!(
            transport_of(&circuit).to_string(),
            "/ip4/127.0.0.1/tcp/7421"
        );
        assert!(is_loopback(&circuit));
        let direct: Multiaddr = format!("/ip4/198.18.1.2/udp/7421/quic-v1/p2p/{peer}")
            .parse()
            .expect("addr");
        assert_eq!(
            transport_of(&direct).to_string(),
            "/ip4/198.18.1.2/udp/7421/quic-v1"
        );
        assert_eq!(without_peer(&direct), transport_of(&direct));
        assert!(!is_loopback(&direct));
    }
}
