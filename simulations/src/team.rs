//! The team every simulated member belongs to, made as the node makes one:
//! member 0 creates the workspace (its key is the capability root), writes
//! the access document with the node's own schema writers
//! (`protocol::policy::schema`) and mints each member a real biscuit token
//! (`protocol::capability::mint`). Every member starts from that access
//! document, as a node that joined and synced it does.

use std::collections::BTreeMap;

use automerge::transaction::CommitOptions;
use automerge::{ActorId, AutoCommit};
use ed25519_dalek::SigningKey;
use rand_chacha::ChaCha8Rng;
use xencode_protocol::api::Role;
use xencode_protocol::envelope::SignedHead;
use xencode_protocol::ids::actor_id;
use xencode_protocol::policy::schema;
use xencode_protocol::{DocId, PeerId, WorkspaceId, capability};

/// The workspace every simulated member shares.
pub const WS: WorkspaceId = WorkspaceId::from_bytes([0x5a; 16]);

/// Virtual time 0 as unix ms: tokens, expiries and change timestamps are
/// real times, as the node writes them.
pub const EPOCH_MS: u64 = 1_750_000_000_000;

/// Virtual ms as unix ms.
pub fn unix_ms(now: u64) -> u64 {
    EPOCH_MS + now
}

/// A change's timestamp (unix seconds, as the node stamps changes) at
/// virtual ms `now`.
pub fn stamp(now: u64) -> i64 {
    i64::try_from(unix_ms(now) / 1000).unwrap_or(i64::MAX)
}

/// Why a team cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TeamError {
    #[error("minting a token: {0}")]
    Token(#[from] capability::CapabilityError),
    #[error("writing the access document: {0}")]
    Access(#[from] automerge::AutomergeError),
}

/// What every member knows about the team before anything happens.
#[derive(Debug)]
pub struct Team {
    pub keys: Vec<[u8; 32]>,
    pub peers: Vec<PeerId>,
    pub by_peer: BTreeMap<PeerId, usize>,
    /// Each member's Automerge actor id, to name who wrote a change.
    pub by_actor: BTreeMap<ActorId, usize>,
    /// The role each member was invited with (member 0: the root, admin).
    pub roles: Vec<Role>,
    /// Each member's token, minted by the root.
    pub tokens: Vec<Vec<u8>>,
    /// When each member's membership ends (unix ms), if it does.
    pub expires: Vec<Option<u64>>,
    /// The root key (member 0's public key).
    pub root: [u8; 32],
    /// The access document's id, and the other documents' ids.
    pub access: DocId,
    pub docs: Vec<DocId>,
    /// The access document as the root wrote it (one change, raw), and
    /// its signature: every member starts with it.
    pub genesis: Vec<u8>,
    pub genesis_signature: SignedHead,
}

impl Team {
    /// The team of `keys` (member 0 the root) with `roles` and membership
    /// ends `expires`, sharing `docs` documents.
    pub fn new(
        keys: &[SigningKey],
        roles: Vec<Role>,
        expires: Vec<Option<u64>>,
        docs: usize,
        rng: &mut ChaCha8Rng,
    ) -> Result<Self, TeamError> {
        let publics: Vec<[u8; 32]> = keys.iter().map(|k| k.verifying_key().to_bytes()).collect();
        let peers: Vec<PeerId> = publics
            .iter()
            .map(|p| {
                xencode_protocol::ids::peer_id_of(p)
                    .map_err(|e| capability::CapabilityError::NotACapability(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        let root_secret = keys[0].to_bytes();
        let root = publics[0];
        let mut tokens = Vec::with_capacity(keys.len());
        let mut token_ids = Vec::with_capacity(keys.len());
        for (i, peer) in peers.iter().enumerate() {
            let token = capability::mint(&root_secret, &WS, peer, roles[i], expires[i], rng)?;
            let verified = capability::verify(&token, &root, EPOCH_MS)?;
            token_ids.push(verified.revocation_ids.last().cloned().unwrap_or_default());
            tokens.push(token);
        }
        let access = DocId::derive(&WS, b"access-document\0");
        let root_peer = peers[0].to_string();
        let mut am = AutoCommit::new();
        am.set_actor(ActorId::from(actor_id(&root, 0).as_slice()));
        let creator = schema::Creator {
            peer: &root_peer,
            root_key: &root,
        };
        schema::genesis(&mut am, "simulated team", creator, &[7; 16], EPOCH_MS)?;
        schema::record_token_id(&mut am, &root_peer, &token_ids[0])?;
        for i in 1..keys.len() {
            schema::add_member(
                &mut am,
                &peers[i].to_string(),
                roles[i],
                &token_ids[i],
                expires[i],
                &root_peer,
                EPOCH_MS,
            )?;
        }
        // The workspace was made before the run (a day before, say): its
        // access document is no document born during a session, which the
        // engine sends unasked (`send.rs`, `born_after`).
        am.commit_with(CommitOptions::default().with_time(stamp(0) - 86_400));
        let change = am
            .get_last_local_change()
            .ok_or(automerge::AutomergeError::Fail)?;
        let genesis = change.raw_bytes().to_vec();
        let genesis_signature = SignedHead::sign(&keys[0], 0, &WS, &access, change.hash().0);
        Ok(Self {
            by_peer: peers.iter().enumerate().map(|(i, p)| (*p, i)).collect(),
            by_actor: publics
                .iter()
                .enumerate()
                .map(|(i, p)| (ActorId::from(actor_id(p, 0).as_slice()), i))
                .collect(),
            keys: publics,
            peers,
            roles,
            tokens,
            expires,
            root,
            access,
            docs: (0..docs)
                .map(|d| DocId::from_bytes([d as u8 + 1; 16]))
                .collect(),
            genesis,
            genesis_signature,
        })
    }

    /// Every document of the workspace: the access document first.
    pub fn all_docs(&self) -> Vec<DocId> {
        std::iter::once(self.access)
            .chain(self.docs.iter().copied())
            .collect()
    }
}
