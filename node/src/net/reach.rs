//! Reaching members behind NATs with libp2p's own machinery: circuit relay
//! v2 served by members that run with `relay = true`, reservations on the
//! relays a node knows, and how each connection runs (direct, relayed,
//! hole-punched by DCUtR) for `xencode peers`.
//!
//! AutoNAT tells a node whether peers can dial it. Until it is known to be
//! reachable (`public`), it keeps a reservation on every member relay it
//! knows; once it is, it gives the learned ones up (configured relays stay).
//!
//! A relay serves members only: reservations and circuits are admitted by
//! a rate-limiter hook that asks whether the peer is a member (listed, not
//! revoked, not expired) of a workspace this node holds
//! ([`StoreStats::members`]); a reservation or circuit held by a peer that
//! stops being one is cut on the next tick ([`RelayService::strangers`]).
//! Traffic through a relay stays noise-encrypted end to end.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId, autonat, relay};
use xencode_protocol::api::{ConnectionKind, Reachability};

use crate::config::RelayLimits;
use crate::store::StoreStats;

/// Longest wait between two reservation attempts on one relay.
const MAX_RESERVE_BACKOFF: Duration = Duration::from_secs(60);
/// Relays reserved on at most (configured and learned together).
const MAX_RELAYS: usize = 8;

/// The relay server's behaviour for `limits`, admitting members only.
pub(super) fn server(
    local: PeerId,
    limits: &RelayLimits,
    stats: &Arc<StoreStats>,
) -> relay::Behaviour {
    let member = |stats: Arc<StoreStats>| {
        move |peer: PeerId, _addr: &Multiaddr, _now: Instant| {
            stats.members.read().is_ok_and(|m| m.contains(&peer))
        }
    };
    let mut config = relay::Config {
        max_reservations: limits.max_reservations,
        max_reservations_per_peer: 2,
        reservation_duration: Duration::from_secs(30 * 60),
        max_circuits: limits.max_circuits,
        max_circuits_per_peer: limits.max_circuits_per_peer,
        max_circuit_duration: Duration::from_secs(limits.max_circuit_secs),
        max_circuit_bytes: limits.max_circuit_bytes,
        ..relay::Config::default()
    };
    config
        .reservation_rate_limiters
        .push(Box::new(member(stats.clone())));
    config
        .circuit_src_rate_limiters
        .push(Box::new(member(stats.clone())));
    let mut behaviour = relay::Behaviour::new(local, config);
    // Advertise the hop protocol whatever the node believes about its own
    // reachability: members learn from identify that this node relays.
    behaviour.set_status(Some(relay::Status::Enable));
    behaviour
}

/// AutoNAT (v1) as a node runs it: first probe 5 s after start, again
/// every 30 s until sure, every 10 minutes then. Private addresses count:
/// teammates on a LAN, or behind one NAT, are who must dial this node.
pub(super) fn autonat_config() -> autonat::Config {
    autonat::Config {
        boot_delay: Duration::from_secs(5),
        retry_interval: Duration::from_secs(30),
        refresh_interval: Duration::from_secs(10 * 60),
        throttle_server_period: Duration::from_secs(30),
        only_global_ips: false,
        ..autonat::Config::default()
    }
}

/// AutoNAT's status as the API says it.
pub(super) fn reachability(status: &autonat::NatStatus) -> Reachability {
    match status {
        autonat::NatStatus::Public(_) => Reachability::Public,
        autonat::NatStatus::Private => Reachability::Private,
        autonat::NatStatus::Unknown => Reachability::Unknown,
    }
}

/// What the relay server holds, for metrics and for cutting strangers.
#[derive(Default)]
pub(super) struct RelayService {
    reservations: HashSet<PeerId>,
    circuits: HashMap<(PeerId, PeerId), usize>,
}

impl RelayService {
    /// Notes a relay event; returns the metric it makes, if any, as
    /// (kind, outcome).
    pub(super) fn event(&mut self, event: &relay::Event) -> Option<(&'static str, &'static str)> {
        match event {
            relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                self.reservations.insert(*src_peer_id);
                Some(("reservation", "accepted"))
            }
            relay::Event::ReservationReqDenied {
                src_peer_id,
                status,
            } => {
                tracing::info!(peer = %src_peer_id, ?status, "relay reservation refused (not a member, or over the limits)");
                Some(("reservation", "denied"))
            }
            relay::Event::ReservationClosed { src_peer_id }
            | relay::Event::ReservationTimedOut { src_peer_id } => {
                self.reservations.remove(src_peer_id);
                None
            }
            relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            } => {
                *self
                    .circuits
                    .entry((*src_peer_id, *dst_peer_id))
                    .or_default() += 1;
                Some(("circuit", "accepted"))
            }
            relay::Event::CircuitReqDenied {
                src_peer_id,
                dst_peer_id,
                status,
            } => {
                tracing::info!(src = %src_peer_id, dst = %dst_peer_id, ?status, "relay circuit refused");
                Some(("circuit", "denied"))
            }
            relay::Event::CircuitClosed {
                src_peer_id,
                dst_peer_id,
                error,
            } => {
                tracing::debug!(src = %src_peer_id, dst = %dst_peer_id, ?error, "relay circuit closed");
                let key = (*src_peer_id, *dst_peer_id);
                if let Some(n) = self.circuits.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        self.circuits.remove(&key);
                    }
                }
                None
            }
            _ => None,
        }
    }

    /// Reservations and circuits held now.
    pub(super) fn counts(&self) -> (usize, usize) {
        (self.reservations.len(), self.circuits.values().sum())
    }

    /// Peers holding a reservation or a circuit end that are no longer
    /// members (revoked, expired, or their workspace forgotten): the node
    /// disconnects them, which ends both.
    pub(super) fn strangers(&self, members: &HashSet<PeerId>) -> Vec<PeerId> {
        let mut out: Vec<PeerId> = self
            .reservations
            .iter()
            .chain(self.circuits.keys().flat_map(|(s, d)| [s, d]))
            .filter(|p| !members.contains(p))
            .copied()
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// A relay this node keeps a reservation on.
struct Slot {
    /// The relay's address, without `/p2p-circuit`, ending in its peer id.
    addr: Multiaddr,
    /// From `relays` in the configuration (kept whatever happens), or
    /// learned from a member that relays (dropped when it stops being one).
    configured: bool,
    listener: Option<ListenerId>,
    reserved: bool,
    backoff: Duration,
    next: Instant,
}

/// This node's reservations on relays: listening on `<relay>/p2p-circuit`
/// is how libp2p asks a relay for one; a closed listener is retried with
/// backoff.
#[derive(Default)]
pub(super) struct Reservations {
    /// AutoNAT found this node reachable: relays learned from members are
    /// not needed.
    public: bool,
    slots: HashMap<PeerId, Slot>,
    /// Peers that said they relay, at the address to reach them.
    /// and its QUIC address when this node reached it over something else
    /// ([`quic_address`]).
    candidates: HashMap<PeerId, (Multiaddr, Option<Multiaddr>)>,
}

impl Reservations {
    /// Relays named in the configuration.
    pub(super) fn configured(addrs: &[Multiaddr]) -> Self {
        let mut r = Self::default();
        for addr in addrs {
            if let Some(Protocol::P2p(relay)) = addr.iter().last() {
                r.add(relay, addr.clone(), true);
            }
        }
        r
    }

    fn add(&mut self, relay: PeerId, addr: Multiaddr, configured: bool) {
        if self.slots.len() >= MAX_RELAYS && !self.slots.contains_key(&relay) {
            return;
        }
        self.slots.entry(relay).or_insert_with(|| Slot {
            addr,
            configured,
            listener: None,
            reserved: false,
            backoff: Duration::from_secs(1),
            next: Instant::now(),
        });
    }

    /// A member that relays, reachable at `addr` (ending in its peer id).
    pub(super) fn learned(&mut self, relay: PeerId, addr: Multiaddr) {
        self.add(relay, addr, false);
    }

    /// Whether a reservation is wanted or held on `relay`.
    pub(super) fn knows(&self, relay: &PeerId) -> bool {
        self.slots.contains_key(relay)
    }

    /// Learned relays that are no longer members: their listeners, to close.
    pub(super) fn forget_strangers(&mut self, members: &HashSet<PeerId>) -> Vec<ListenerId> {
        let gone: Vec<PeerId> = self
            .slots
            .iter()
            .filter(|(p, s)| !s.configured && !members.contains(p))
            .map(|(p, _)| *p)
            .collect();
        gone.into_iter()
            .filter_map(|p| self.slots.remove(&p)?.listener)
            .collect()
    }

    /// Circuit listen addresses to ask for now (each marks its slot as
    /// trying, until [`Self::listening`] or [`Self::closed`]).
    pub(super) fn due(&mut self, now: Instant) -> Vec<(PeerId, Multiaddr)> {
        self.slots
            .iter_mut()
            .filter(|(_, s)| s.listener.is_none() && s.next <= now)
            .map(|(p, s)| {
                s.next = now + s.backoff;
                s.backoff = (s.backoff * 2).min(MAX_RESERVE_BACKOFF);
                (*p, s.addr.clone().with(Protocol::P2pCircuit))
            })
            .collect()
    }

    /// The listener asking `relay` for a reservation.
    pub(super) fn listening(&mut self, relay: PeerId, listener: ListenerId) {
        if let Some(s) = self.slots.get_mut(&relay) {
            s.listener = Some(listener);
        }
    }

    /// The relay accepted (or renewed) the reservation.
    pub(super) fn accepted(&mut self, relay: &PeerId) {
        if let Some(s) = self.slots.get_mut(relay) {
            s.reserved = true;
            s.backoff = Duration::from_secs(1);
        }
    }

    /// A listener closed: if it was a reservation's, try again later.
    pub(super) fn closed(&mut self, listener: ListenerId) {
        for (relay, s) in &mut self.slots {
            if s.listener == Some(listener) {
                tracing::info!(%relay, reserved = s.reserved, "relay reservation ended; asking again");
                s.listener = None;
                s.reserved = false;
            }
        }
    }

    /// A peer that relays identified itself at `addr` (and `quic`): reserved
    /// on once it is a member (perhaps only after the access document syncs).
    pub(super) fn candidate(&mut self, relay: PeerId, addr: Multiaddr, quic: Option<Multiaddr>) {
        if self.candidates.len() < MAX_RELAYS * 4 || self.candidates.contains_key(&relay) {
            self.candidates.insert(relay, (addr, quic));
        }
    }

    /// AutoNAT's verdict: once reachable, learned relays are given up
    /// (their listeners returned, to close); while not, they are wanted.
    pub(super) fn reachable(&mut self, public: bool) -> Vec<ListenerId> {
        self.public = public;
        if !public {
            return Vec::new();
        }
        let learned: Vec<PeerId> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.configured)
            .map(|(p, _)| *p)
            .collect();
        learned
            .into_iter()
            .filter_map(|p| self.slots.remove(&p)?.listener)
            .collect()
    }

    /// Candidates that are members now and not reserved on yet: learned
    /// (unless this node is reachable). Returns them, each with the QUIC
    /// address to open a connection to as well, if any.
    pub(super) fn promote(
        &mut self,
        members: &HashSet<PeerId>,
    ) -> Vec<(PeerId, Option<Multiaddr>)> {
        if self.public {
            return Vec::new();
        }
        let ready: Vec<(PeerId, Multiaddr, Option<Multiaddr>)> = self
            .candidates
            .iter()
            .filter(|(p, _)| members.contains(p) && !self.slots.contains_key(p))
            .map(|(p, (a, q))| (*p, a.clone(), q.clone()))
            .collect();
        ready
            .into_iter()
            .map(|(relay, addr, quic)| {
                tracing::info!(%relay, %addr, "a member relays; asking it for a reservation");
                self.learned(relay, addr);
                (relay, quic)
            })
            .collect()
    }
}

/// The relay named by a relayed address: the peer id before `/p2p-circuit`.
pub(super) fn relay_of(addr: &Multiaddr) -> Option<PeerId> {
    let mut last = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(id) => last = Some(id),
            Protocol::P2pCircuit => return last,
            _ => {}
        }
    }
    None
}

/// Where to reach a relay that identified itself: among the addresses it
/// listens on, the one on the IP this node reached it at (else the first
/// that is not loopback, else any), ending in its peer id.
pub(super) fn relay_address(
    relay: PeerId,
    listen: &[Multiaddr],
    seen_at: &Multiaddr,
) -> Option<Multiaddr> {
    let ip = |a: &Multiaddr| {
        a.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
            _ => None,
        })
    };
    let usable: Vec<&Multiaddr> = listen
        .iter()
        .filter(|a| !a.iter().any(|p| p == Protocol::P2pCircuit))
        .filter(|a| ip(a).is_some_and(|ip| !ip.is_unspecified()))
        .collect();
    let pick = usable
        .iter()
        .find(|a| ip(a).is_some() && ip(a) == ip(seen_at))
        .or_else(|| {
            usable
                .iter()
                .find(|a| ip(a).is_some_and(|ip| !ip.is_loopback()))
        })
        .or_else(|| usable.first())?;
    let bare: Multiaddr = pick
        .iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect();
    Some(bare.with(Protocol::P2p(relay)))
}

/// The relay's QUIC address (as [`relay_address`] picks), when this node
/// reached it over something else: a QUIC connection to the relay too gives
/// this node an observed UDP address, which hole punching needs on both
/// sides (a member seen only over TCP and one seen only over QUIC have no
/// transport in common to punch with).
pub(super) fn quic_address(
    relay: PeerId,
    listen: &[Multiaddr],
    seen_at: &Multiaddr,
) -> Option<Multiaddr> {
    let quic = |a: &Multiaddr| a.iter().any(|p| p == Protocol::QuicV1);
    if quic(seen_at) {
        return None;
    }
    let udp: Vec<Multiaddr> = listen.iter().filter(|a| quic(a)).cloned().collect();
    relay_address(relay, &udp, seen_at)
}

/// Tries of hole punching after a failed one: 10 s later, then 20 s, then
/// 40 s; then the peer stays relayed until this node restarts. (Not reset
/// when the peer disconnects: a try itself closes the relayed connection,
/// so a reset there would lift the limit.)
#[derive(Default)]
pub(super) struct PunchRetries {
    by_peer: HashMap<PeerId, (Instant, u32)>,
}

impl PunchRetries {
    const MAX: u32 = 3;

    pub(super) fn failed(&mut self, peer: PeerId, now: Instant) {
        let tries = self.by_peer.get(&peer).map_or(0, |(_, n)| *n);
        if tries >= Self::MAX {
            return;
        }
        let wait = Duration::from_secs(10) * 2u32.pow(tries);
        self.by_peer.insert(peer, (now + wait, tries + 1));
    }

    pub(super) fn remove(&mut self, peer: &PeerId) {
        self.by_peer.remove(peer);
    }

    /// Peers whose next try is due (each returned once per failure).
    pub(super) fn due(&mut self, now: Instant) -> Vec<PeerId> {
        let due: Vec<PeerId> = self
            .by_peer
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &due {
            if let Some((at, _)) = self.by_peer.get_mut(p) {
                // Not again until it fails again.
                *at = now + Duration::from_secs(24 * 3600);
            }
        }
        due
    }
}

/// One connection as `xencode peers` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub kind: ConnectionKind,
    pub relay: Option<PeerId>,
    pub rtt: Option<Duration>,
}

/// How each open connection runs, by connection.
#[derive(Default)]
pub(super) struct Links {
    /// The peer, the link, and the address the connection runs over.
    by_connection: HashMap<ConnectionId, (PeerId, Link, Multiaddr)>,
    /// Peers DCUtR reached directly: their direct connections are the
    /// punched hole (both sides dial at once, libp2p may keep either, and
    /// only the side that drove DCUtR hears that it worked), until the peer
    /// has no connection left.
    punched: HashSet<PeerId>,
    /// Peers whose last relayed connection closed, until when a direct
    /// connection to them still counts as its upgrade: the side that did
    /// not drive DCUtR may see the relayed connection close before the
    /// punched one opens.
    relayed_until: HashMap<PeerId, Instant>,
}

/// How long after a relayed connection closes a direct one to the same peer
/// is taken for the punched hole.
const UPGRADE_WINDOW: Duration = Duration::from_secs(10);
/// Peers remembered in that window, at most.
const UPGRADES_KEPT: usize = 1024;

impl Links {
    pub(super) fn opened(&mut self, peer: PeerId, connection: ConnectionId, addr: &Multiaddr) {
        let relay = relay_of(addr);
        // A direct connection beside a relayed one is the relayed one's
        // upgrade: the peer could not be dialled before.
        let beside_relayed = self
            .by_connection
            .values()
            .any(|(p, l, _)| *p == peer && l.kind == ConnectionKind::Relayed);
        let just_relayed = self
            .relayed_until
            .remove(&peer)
            .is_some_and(|t| Instant::now() < t);
        if relay.is_none() && (beside_relayed || just_relayed) {
            self.punched.insert(peer);
        }
        let kind = if relay.is_some() {
            ConnectionKind::Relayed
        } else if self.punched.contains(&peer) {
            ConnectionKind::HolePunched
        } else {
            ConnectionKind::Direct
        };
        self.by_connection.insert(
            connection,
            (
                peer,
                Link {
                    kind,
                    relay,
                    rtt: None,
                },
                addr.clone(),
            ),
        );
    }

    /// `peer`'s relayed connections.
    pub(super) fn relayed_connections(&self, peer: &PeerId) -> Vec<ConnectionId> {
        self.by_connection
            .iter()
            .filter(|(_, (p, l, _))| p == peer && l.kind == ConnectionKind::Relayed)
            .map(|(c, _)| *c)
            .collect()
    }

    /// Whether one of `peer`'s connections runs over QUIC.
    pub(super) fn over_quic(&self, peer: &PeerId) -> bool {
        self.by_connection
            .values()
            .any(|(p, _, a)| p == peer && a.iter().any(|x| x == Protocol::QuicV1))
    }

    /// The address `connection` runs over.
    pub(super) fn remote(&self, connection: ConnectionId) -> Option<Multiaddr> {
        self.by_connection
            .get(&connection)
            .map(|(_, _, a)| a.clone())
    }

    pub(super) fn closed(&mut self, connection: ConnectionId) {
        let Some((peer, link, _)) = self.by_connection.remove(&connection) else {
            return;
        };
        if link.kind == ConnectionKind::Relayed {
            let now = Instant::now();
            if self.relayed_until.len() >= UPGRADES_KEPT {
                self.relayed_until.retain(|_, t| now < *t);
            }
            if self.relayed_until.len() < UPGRADES_KEPT {
                self.relayed_until.insert(peer, now + UPGRADE_WINDOW);
            }
        }
        if !self.by_connection.values().any(|(p, _, _)| *p == peer) {
            self.punched.remove(&peer);
        }
    }

    /// DCUtR made a direct connection to `peer` out of a relayed one: every
    /// direct connection to it is the punched hole (also one libp2p reports
    /// only after this).
    pub(super) fn hole_punched(&mut self, peer: PeerId) {
        self.punched.insert(peer);
        for (p, link, _) in self.by_connection.values_mut() {
            if *p == peer && link.kind == ConnectionKind::Direct {
                link.kind = ConnectionKind::HolePunched;
            }
        }
    }

    pub(super) fn rtt(&mut self, connection: ConnectionId, rtt: Duration) {
        if let Some((_, link, _)) = self.by_connection.get_mut(&connection) {
            link.rtt = Some(rtt);
        }
    }

    /// Each connected peer's best connection (hole-punched, then direct,
    /// then relayed).
    pub(super) fn best(&self) -> HashMap<PeerId, Link> {
        let mut out: HashMap<PeerId, Link> = HashMap::new();
        for (peer, link, _) in self.by_connection.values() {
            match out.get(peer) {
                Some(have) if have.kind >= link.kind => {}
                _ => {
                    out.insert(*peer, *link);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> PeerId {
        libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id()
    }

    #[test]
    fn a_relayed_address_names_its_relay_and_the_best_link_wins() {
        let (relay, other) = (peer(), peer());
        let relayed: Multiaddr =
            format!("/ip4/198.18.0.1/tcp/7421/p2p/{relay}/p2p-circuit/p2p/{other}")
                .parse()
                .expect("addr");
        assert_eq!(relay_of(&relayed), Some(relay));
        let direct: Multiaddr = "/ip4/10.0.0.2/tcp/7421".parse().expect("addr");
        assert_eq!(relay_of(&direct), None);

        let mut links = Links::default();
        let (c1, c2) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        links.opened(other, c1, &relayed);
        assert_eq!(links.best()[&other].kind, ConnectionKind::Relayed);
        assert_eq!(links.best()[&other].relay, Some(relay));
        links.opened(other, c2, &direct);
        assert!(!links.over_quic(&other));
        links.opened(
            other,
            ConnectionId::new_unchecked(3),
            &format!("/ip4/10.0.0.2/udp/7421/quic-v1/p2p/{other}")
                .parse()
                .expect("addr"),
        );
        assert!(links.over_quic(&other) && !links.over_quic(&relay));
        links.closed(ConnectionId::new_unchecked(3));
        links.hole_punched(other);
        links.rtt(c2, Duration::from_millis(3));
        let best = links.best()[&other];
        assert_eq!(best.kind, ConnectionKind::HolePunched);
        assert_eq!(best.relay, None);
        assert_eq!(best.rtt, Some(Duration::from_millis(3)));
        // Both sides dialled: the other direct connection is the hole too.
        let c4 = ConnectionId::new_unchecked(4);
        links.opened(other, c4, &direct);
        assert_eq!(links.best()[&other].kind, ConnectionKind::HolePunched);
        links.closed(c2);
        assert_eq!(links.best()[&other].kind, ConnectionKind::HolePunched);
        links.closed(c4);
        assert_eq!(links.best()[&other].kind, ConnectionKind::Relayed);
        links.closed(c1);
        assert!(links.best().is_empty());
    }

    /// The side that did not drive DCUtR may see the relayed connection
    /// close before the punched one opens: that one is still the hole.
    #[test]
    fn a_direct_connection_right_after_a_relayed_one_is_the_punched_hole() {
        let (other, relay) = (peer(), peer());
        let relayed: Multiaddr = format!("/ip4/10.0.0.1/tcp/7421/p2p/{relay}/p2p-circuit")
            .parse()
            .expect("addr");
        let direct: Multiaddr = "/ip4/10.0.0.2/tcp/7421".parse().expect("addr");
        let mut links = Links::default();
        let c1 = ConnectionId::new_unchecked(1);
        links.opened(other, c1, &relayed);
        links.closed(c1);
        let c2 = ConnectionId::new_unchecked(2);
        links.opened(other, c2, &direct);
        assert_eq!(links.best()[&other].kind, ConnectionKind::HolePunched);
        // Once: a later direct connection, with no relayed one before it,
        // is plain direct.
        links.closed(c2);
        links.opened(other, ConnectionId::new_unchecked(3), &direct);
        assert_eq!(links.best()[&other].kind, ConnectionKind::Direct);
    }

    #[test]
    fn a_relay_is_reached_where_it_was_seen_and_strangers_are_named() {
        let relay = peer();
        let listen: Vec<Multiaddr> = [
            "/ip4/127.0.0.1/tcp/7421",
            "/ip4/198.18.0.1/tcp/7421",
            "/ip4/10.9.0.1/tcp/7421",
        ]
        .iter()
        .map(|a| a.parse().expect("addr"))
        .collect();
        let seen: Multiaddr = "/ip4/10.9.0.1/tcp/50000".parse().expect("addr");
        let picked = relay_address(relay, &listen, &seen).expect("an address");
        assert_eq!(
            picked.to_string(),
            format!("/ip4/10.9.0.1/tcp/7421/p2p/{relay}")
        );
        let quic: Multiaddr = "/ip4/10.9.0.1/udp/7421/quic-v1".parse().expect("addr");
        let mut with_quic = listen.clone();
        with_quic.push(quic.clone());
        assert_eq!(
            quic_address(relay, &with_quic, &seen).map(|a| a.to_string()),
            Some(format!("{quic}/p2p/{relay}"))
        );
        assert_eq!(
            quic_address(relay, &with_quic, &quic),
            None,
            "reached over QUIC already"
        );
        assert_eq!(
            quic_address(relay, &listen, &seen),
            None,
            "no QUIC to reach"
        );
        let elsewhere: Multiaddr = "/ip4/192.0.2.1/tcp/1".parse().expect("addr");
        let picked = relay_address(relay, &listen, &elsewhere).expect("an address");
        assert_eq!(
            picked.to_string(),
            format!("/ip4/198.18.0.1/tcp/7421/p2p/{relay}")
        );

        let (member, stranger) = (peer(), peer());
        let mut service = RelayService::default();
        service.event(&relay::Event::ReservationReqAccepted {
            src_peer_id: member,
            renewed: false,
        });
        service.event(&relay::Event::ReservationReqAccepted {
            src_peer_id: stranger,
            renewed: false,
        });
        service.event(&relay::Event::CircuitReqAccepted {
            src_peer_id: stranger,
            dst_peer_id: member,
        });
        assert_eq!(service.counts(), (2, 1));
        let members: HashSet<PeerId> = [member].into();
        assert_eq!(service.strangers(&members), vec![stranger]);
        service.event(&relay::Event::CircuitClosed {
            src_peer_id: stranger,
            dst_peer_id: member,
            error: None,
        });
        service.event(&relay::Event::ReservationClosed {
            src_peer_id: stranger,
        });
        assert_eq!(service.counts(), (1, 0));
        assert!(service.strangers(&members).is_empty());
    }

    #[test]
    fn failed_hole_punching_is_tried_again_three_times_with_growing_waits() {
        let peer = peer();
        let mut r = PunchRetries::default();
        let t0 = Instant::now();
        let mut tries = Vec::new();
        let mut now = t0;
        r.failed(peer, now);
        for _ in 0..200 {
            now += Duration::from_secs(1);
            if !r.due(now).is_empty() {
                tries.push((now - t0).as_secs());
                r.failed(peer, now);
            }
        }
        assert_eq!(tries, vec![10, 30, 70]);
        r.remove(&peer);
        assert!(r.due(now + Duration::from_secs(100)).is_empty());
    }

    #[test]
    fn a_closed_reservation_is_asked_for_again_after_a_growing_wait() {
        let relay = peer();
        let addr: Multiaddr = format!("/ip4/198.18.0.1/tcp/7421/p2p/{relay}")
            .parse()
            .expect("addr");
        let mut r = Reservations::configured(std::slice::from_ref(&addr));
        let now = Instant::now();
        let due = r.due(now);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.to_string(), format!("{addr}/p2p-circuit"));
        let listener = ListenerId::next();
        r.listening(relay, listener);
        assert!(
            r.due(now + Duration::from_secs(10)).is_empty(),
            "one ask at a time"
        );
        r.closed(listener);
        assert!(r.due(now).is_empty(), "not at once");
        assert_eq!(r.due(now + Duration::from_secs(3)).len(), 1);
        // Configured relays stay; learned ones go when they stop being members.
        let learned = peer();
        r.learned(
            learned,
            format!("/ip4/198.18.0.2/tcp/7421/p2p/{learned}")
                .parse()
                .expect("addr"),
        );
        let l2 = ListenerId::next();
        r.listening(learned, l2);
        assert_eq!(r.forget_strangers(&HashSet::new()), vec![l2]);
        assert!(r.knows(&relay) && !r.knows(&learned));
        // A relay seen before it is known as a member is taken up once it is.
        let quic: Multiaddr = format!("/ip4/198.18.0.2/udp/7421/quic-v1/p2p/{learned}")
            .parse()
            .expect("addr");
        r.candidate(
            learned,
            format!("/ip4/198.18.0.2/tcp/7421/p2p/{learned}")
                .parse()
                .expect("addr"),
            Some(quic.clone()),
        );
        assert!(r.promote(&HashSet::new()).is_empty());
        assert_eq!(r.promote(&[learned].into()), vec![(learned, Some(quic))]);
        assert!(r.knows(&learned));
        assert!(r.promote(&[learned].into()).is_empty());
        // Reachable: learned relays are given up, configured ones kept; and
        // taken up again when AutoNAT finds the node unreachable.
        let l3 = ListenerId::next();
        r.listening(learned, l3);
        assert_eq!(r.reachable(true), vec![l3]);
        assert!(r.knows(&relay) && !r.knows(&learned));
        assert!(r.promote(&[learned].into()).is_empty());
        assert!(r.reachable(false).is_empty());
        assert_eq!(r.promote(&[learned].into()).len(), 1);
    }
}
