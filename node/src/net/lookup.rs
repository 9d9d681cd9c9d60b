//! Finding a member by peer id when every address known for it is stale:
//! a Kademlia lookup among members (`/xencode/kad/1.0.0`, never the public
//! IPFS DHT).
//!
//! Each node's routing table holds only members (added by hand from what
//! identify says of them, circuit addresses included), and the Kademlia
//! protocol runs only on connections to members ([`MembersOnly`]): a
//! stranger that connects can neither ask where a member is nor put itself
//! in a table. A node that keeps failing to dial a member asks the members
//! it is connected to for the peers closest to that member's id; any of
//! them connected to it has it in its table, at the addresses it is
//! reachable at now, and Kademlia dials it there.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use either::Either;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{PeerId, StreamProtocol, kad};

use crate::store::StoreStats;

/// The Kademlia protocol of xencode members.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/xencode/kad/1.0.0");

/// Kademlia as a node runs it: routing table filled by hand (members only),
/// always answering (a member behind a NAT is asked through its relayed
/// connections), no periodic walks of a network that is only the team.
pub(super) fn kademlia(local: PeerId) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut config = kad::Config::new(KAD_PROTOCOL);
    config
        .set_kbucket_inserts(kad::BucketInserts::Manual)
        .set_query_timeout(Duration::from_secs(30))
        .set_periodic_bootstrap_interval(None);
    let mut kad = kad::Behaviour::with_config(local, kad::store::MemoryStore::new(local), config);
    kad.set_mode(Some(kad::Mode::Server));
    kad
}

/// A behaviour that runs only on connections to members: a connection to
/// anyone else gets a handler that speaks no protocol, and the inner
/// behaviour never hears of it.
pub struct MembersOnly<B> {
    inner: B,
    stats: Arc<StoreStats>,
    /// Connections the inner behaviour knows, per peer.
    open: HashMap<PeerId, Vec<ConnectionId>>,
    /// Connections to non-members: hidden from the inner behaviour.
    gated: HashSet<ConnectionId>,
}

impl<B> MembersOnly<B> {
    pub fn new(inner: B, stats: Arc<StoreStats>) -> Self {
        Self {
            inner,
            stats,
            open: HashMap::new(),
            gated: HashSet::new(),
        }
    }

    pub fn inner(&mut self) -> &mut B {
        &mut self.inner
    }

    /// Whether `peer` is a member of a workspace held here.
    pub fn is_member(&self, peer: &PeerId) -> bool {
        self.stats.members.read().is_ok_and(|m| m.contains(peer))
    }

    /// Peers the inner behaviour runs on a connection to that are not in
    /// `members` (any more).
    pub fn lapsed(&self, members: &HashSet<PeerId>) -> Vec<PeerId> {
        self.open
            .keys()
            .filter(|p| !members.contains(p))
            .copied()
            .collect()
    }

    /// Whether the inner behaviour runs on a connection to `peer`.
    pub fn carries(&self, peer: &PeerId) -> bool {
        self.open.get(peer).is_some_and(|c| !c.is_empty())
    }

    fn admit<H>(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        handler: impl FnOnce(&mut B) -> Result<H, ConnectionDenied>,
    ) -> Result<Either<H, dummy::ConnectionHandler>, ConnectionDenied> {
        if self.is_member(&peer) {
            handler(&mut self.inner).map(Either::Left)
        } else {
            self.gated.insert(id);
            Ok(Either::Right(dummy::ConnectionHandler))
        }
    }
}

impl<B: NetworkBehaviour> NetworkBehaviour for MembersOnly<B> {
    type ConnectionHandler = Either<THandler<B>, dummy::ConnectionHandler>;
    type ToSwarm = B::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(id, local, remote)
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(id, peer, |b| {
            b.handle_established_inbound_connection(id, peer, local, remote)
        })
    }

    fn handle_pending_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: Option<PeerId>,
        addresses: &[Multiaddr],
        role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner
            .handle_pending_outbound_connection(id, peer, addresses, role)
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.admit(id, peer, |b| {
            b.handle_established_outbound_connection(id, peer, addr, role, port_use)
        })
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                if self.gated.contains(&e.connection_id) {
                    return;
                }
                let conns = self.open.entry(e.peer_id).or_default();
                let other_established = conns.len();
                conns.push(e.connection_id);
                self.inner.on_swarm_event(FromSwarm::ConnectionEstablished(
                    ConnectionEstablished {
                        other_established,
                        ..e
                    },
                ));
            }
            FromSwarm::ConnectionClosed(e) => {
                if self.gated.remove(&e.connection_id) {
                    return;
                }
                let remaining_established = match self.open.get_mut(&e.peer_id) {
                    Some(conns) => {
                        conns.retain(|c| *c != e.connection_id);
                        let n = conns.len();
                        if n == 0 {
                            self.open.remove(&e.peer_id);
                        }
                        n
                    }
                    None => 0,
                };
                self.inner
                    .on_swarm_event(FromSwarm::ConnectionClosed(ConnectionClosed {
                        remaining_established,
                        ..e
                    }));
            }
            FromSwarm::AddressChange(e) if self.gated.contains(&e.connection_id) => {}
            // Kademlia takes a new listen address with no connection as a
            // reason to bootstrap, which fails with an empty table (and says
            // so at every start); with no member connected there is nothing
            // to bootstrap from.
            FromSwarm::NewListenAddr(_) if self.open.is_empty() => {}
            other => self.inner.on_swarm_event(other),
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {
            Either::Left(e) => self.inner.on_connection_handler_event(peer, id, e),
            Either::Right(never) => match never {},
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        loop {
            let event = match self.inner.poll(cx) {
                Poll::Ready(e) => e,
                Poll::Pending => return Poll::Pending,
            };
            // An event for a handler goes to one the inner behaviour runs
            // on, never to a non-member's (which would not understand it).
            if let ToSwarm::NotifyHandler {
                peer_id,
                handler,
                event,
            } = event
            {
                let target = match handler {
                    NotifyHandler::One(id) if !self.gated.contains(&id) => Some(id),
                    NotifyHandler::One(_) => None,
                    NotifyHandler::Any => self.open.get(&peer_id).and_then(|c| c.first().copied()),
                };
                match target {
                    Some(id) => {
                        return Poll::Ready(ToSwarm::NotifyHandler {
                            peer_id,
                            handler: NotifyHandler::One(id),
                            event: Either::Left(event),
                        });
                    }
                    None => continue,
                }
            }
            return Poll::Ready(event.map_in(Either::Left));
        }
    }
}
