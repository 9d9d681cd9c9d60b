//! A raw libp2p peer for hostile tests: it speaks `/xencode/sync/2` at the
//! byte level, so it can send what an honest node never would — garbage,
//! oversize length prefixes, frames outside a session, stolen tokens,
//! forged signatures — and records every frame the node sends it. It also
//! joins gossipsub, to subscribe to topics it guesses and publish junk, and
//! speaks the members' Kademlia, to ask where members are.

use std::io;
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, Codec, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, gossipsub, kad, noise, tcp, yamux};

/// One request as it goes on the wire: a length prefix that may lie, then
/// the body; a node batches several frames in one request (`more`, each
/// with an honest prefix).
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub declared_len: u32,
    pub body: Vec<u8>,
    pub more: Vec<Vec<u8>>,
}

impl RawRequest {
    /// An honest length prefix for `body`.
    pub fn honest(body: Vec<u8>) -> Self {
        Self {
            declared_len: u32::try_from(body.len()).unwrap_or(u32::MAX),
            body,
            more: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

/// What the raw peer will read from the node: frames up to 16 MiB.
const MAX_READ: usize = 16 * 1024 * 1024;

impl Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = RawRequest;
    type Response = ();

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<RawRequest>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let declared_len = u32::from_be_bytes(len);
        let mut body = Vec::new();
        (&mut *io)
            .take((declared_len as usize).min(MAX_READ) as u64)
            .read_to_end(&mut body)
            .await?;
        // The frames batched behind the first, until the stream ends.
        let mut more = Vec::new();
        loop {
            let mut len = [0u8; 4];
            match io.read_exact(&mut len).await {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
            let mut next = Vec::new();
            (&mut *io)
                .take((u32::from_be_bytes(len) as usize).min(MAX_READ) as u64)
                .read_to_end(&mut next)
                .await?;
            more.push(next);
        }
        Ok(RawRequest {
            declared_len,
            body,
            more,
        })
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<()>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut ack = [0u8; 1];
        io.read_exact(&mut ack).await?;
        Ok(())
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: RawRequest,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&req.declared_len.to_be_bytes()).await?;
        io.write_all(&req.body).await?;
        for f in &req.more {
            let len = u32::try_from(f.len()).unwrap_or(u32::MAX);
            io.write_all(&len.to_be_bytes()).await?;
            io.write_all(f).await?;
        }
        io.close().await
    }

    async fn write_response<T>(&mut self, _: &StreamProtocol, io: &mut T, (): ()) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        io.write_all(&[1]).await?;
        io.close().await
    }
}

#[derive(NetworkBehaviour)]
struct RawBehaviour {
    sync: request_response::Behaviour<RawCodec>,
    gossip: gossipsub::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
}

/// A libp2p peer with the sync protocol and gossipsub.
pub struct RawPeer {
    swarm: Swarm<RawBehaviour>,
    /// Frame bodies the node sent us, in order.
    pub received: Vec<Vec<u8>>,
    /// Gossip messages that reached us: (topic, data).
    pub gossip: Vec<(String, Vec<u8>)>,
    /// Times the connection to a node closed.
    pub closed: usize,
}

impl RawPeer {
    /// A peer with the ed25519 secret `secret`.
    pub fn new(secret: [u8; 32]) -> anyhow::Result<Self> {
        let mut secret = secret;
        let key = libp2p::identity::Keypair::ed25519_from_bytes(&mut secret)?;
        let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|key| {
                let local = key.public().to_peer_id();
                let kad = kad::Behaviour::with_config(
                    local,
                    kad::store::MemoryStore::new(local),
                    kad::Config::new(StreamProtocol::new("/xencode/kad/1.0.0")),
                );
                let gossip = gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossipsub::ConfigBuilder::default()
                        .validation_mode(gossipsub::ValidationMode::Strict)
                        .build()?,
                )?;
                Ok(RawBehaviour {
                    sync: request_response::Behaviour::with_codec(
                        RawCodec,
                        [(
                            StreamProtocol::new("/xencode/sync/2"),
                            ProtocolSupport::Full,
                        )],
                        request_response::Config::default()
                            .with_request_timeout(Duration::from_secs(10)),
                    ),
                    gossip,
                    kad,
                })
            })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        Ok(Self {
            swarm,
            received: Vec::new(),
            gossip: Vec::new(),
            closed: 0,
        })
    }

    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.swarm.is_connected(peer)
    }

    /// Dials `addr` and waits (up to 10 s) until connected to `peer`.
    pub async fn connect(&mut self, addr: &str, peer: &PeerId) -> anyhow::Result<()> {
        let addr: Multiaddr = addr.parse()?;
        self.swarm.dial(addr)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.swarm.is_connected(peer) {
            if Instant::now() > deadline {
                anyhow::bail!("could not connect to {peer}");
            }
            self.pump(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Sends one request to `peer`.
    pub fn send(&mut self, peer: &PeerId, req: RawRequest) {
        self.swarm.behaviour_mut().sync.send_request(peer, req);
    }

    /// Subscribes to a gossip topic by name.
    pub fn subscribe(&mut self, topic: &str) -> bool {
        self.swarm
            .behaviour_mut()
            .gossip
            .subscribe(&gossipsub::IdentTopic::new(topic))
            .unwrap_or(false)
    }

    /// Publishes `data` on a gossip topic; false if gossipsub refused it
    /// (no peer in the topic, or a duplicate).
    pub fn publish(&mut self, topic: &str, data: Vec<u8>) -> bool {
        self.swarm
            .behaviour_mut()
            .gossip
            .publish(gossipsub::IdentTopic::new(topic), data)
            .is_ok()
    }

    /// Asks `node` (at `addr`), by Kademlia, for the peers closest to
    /// `target`: what it answered, within 15 s (empty if it did not).
    pub async fn closest_peers(
        &mut self,
        node: &PeerId,
        addr: &str,
        target: PeerId,
    ) -> anyhow::Result<Vec<PeerId>> {
        let kad = &mut self.swarm.behaviour_mut().kad;
        kad.add_address(node, addr.parse()?);
        let query = kad.get_closest_peers(target);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let event = tokio::select! {
                e = self.swarm.select_next_some() => e,
                () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
            };
            if let SwarmEvent::Behaviour(RawBehaviourEvent::Kad(
                kad::Event::OutboundQueryProgressed {
                    id,
                    result: kad::QueryResult::GetClosestPeers(result),
                    step,
                    ..
                },
            )) = event
                && id == query
                && step.last
            {
                let peers = match result {
                    Ok(ok) => ok.peers,
                    Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                };
                return Ok(peers.into_iter().map(|p| p.peer_id).collect());
            }
        }
    }

    /// Drives the swarm for `dur`: acknowledges and records what arrives.
    pub async fn pump(&mut self, dur: Duration) {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            let event = tokio::select! {
                e = self.swarm.select_next_some() => e,
                () = tokio::time::sleep_until(deadline) => return,
            };
            match event {
                SwarmEvent::Behaviour(RawBehaviourEvent::Gossip(gossipsub::Event::Message {
                    message,
                    ..
                })) => self.gossip.push((message.topic.to_string(), message.data)),
                SwarmEvent::Behaviour(RawBehaviourEvent::Sync(
                    request_response::Event::Message {
                        message:
                            request_response::Message::Request {
                                request, channel, ..
                            },
                        ..
                    },
                )) => {
                    self.received.push(request.body);
                    self.received.extend(request.more);
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, ());
                }
                SwarmEvent::ConnectionClosed { .. } => self.closed += 1,
                _ => {}
            }
        }
    }
}
