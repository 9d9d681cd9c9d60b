//! Capability tokens (biscuit-auth) rooted in a workspace creator's key.
//!
//! A token's authority block, signed by the workspace's root key, names the
//! workspace, the holder (a peer id) and a role, with an optional expiry:
//!
//! ```text
//! workspace("<ws>"); holder("<peer id>"); role("developer"); expires(<unix ms>);
//! check if now_ms($t), $t <= <unix ms>;
//! ```
//!
//! An admin who is not the root delegates by appending a third-party block
//! signed with their own key: `delegate("<peer id>", "<role>")` (plus an
//! optional expiry and check). [`authorize`] walks the chain: each delegation
//! block must be signed by the key of the holder the chain reached so far,
//! who must be an admin; the last holder must be the authenticated peer. A
//! delegation can never grant more than the delegator holds, and it expires
//! no later than the token it extends. Every block carries a revocation id;
//! revoking one invalidates every token built on it.
//!
//! [`authorize`] is a pure function of the token, the root key, the peer, the
//! revocation list and `now`: it reads no clock (biscuit's own run limits
//! aside) and is tested without a node.

use std::collections::BTreeSet;
use std::time::Duration;

use biscuit_auth::builder::{Algorithm, BlockBuilder};
use biscuit_auth::datalog::{RunLimits, SymbolTable};
use biscuit_auth::{AuthorizerBuilder, Biscuit, KeyPair, PrivateKey, PublicKey};
use libp2p_identity::PeerId;
use rand_core::{CryptoRng, RngCore};

use crate::api::Role;
use crate::ids::WorkspaceId;

/// Longest delegation chain accepted (authority block included).
pub const MAX_BLOCKS: usize = 8;

/// What an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Right {
    Read,
    Write,
    Invite,
    Revoke,
}

impl Role {
    /// Whether the role carries `right`: viewer = read; developer = read,
    /// write; admin = read, write, invite, revoke.
    pub fn allows(self, right: Right) -> bool {
        match right {
            Right::Read => true,
            Right::Write => self >= Role::Developer,
            Right::Invite | Right::Revoke => self == Role::Admin,
        }
    }
}

/// A verified capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub workspace: WorkspaceId,
    pub holder: PeerId,
    pub role: Role,
    /// Earliest expiry along the chain, in unix milliseconds.
    pub expires_ms: Option<u64>,
    /// The revocation id of the block that granted the holder (hex): what
    /// `revoke` names to cancel exactly this token.
    pub token_id: String,
    /// Revocation ids of every block (hex), root first.
    pub revocation_ids: Vec<String>,
    /// The peers the chain passed through, root holder first.
    pub chain: Vec<PeerId>,
}

/// Why a token does not authorize the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapabilityError {
    #[error("the token is not a valid biscuit for this workspace's root key: {0}")]
    Invalid(String),
    #[error("the token is not a xencode capability: {0}")]
    NotACapability(String),
    #[error("the token is for workspace {token}, not {requested}")]
    WrongWorkspace { token: String, requested: String },
    #[error("the token belongs to {holder}, not to the peer presenting it")]
    WrongHolder { holder: String },
    #[error("the token expired")]
    Expired,
    #[error("the token was revoked")]
    Revoked,
    #[error("a {role} may not {right:?}")]
    Forbidden { role: &'static str, right: Right },
    #[error("delegation chain is broken: {0}")]
    BadDelegation(String),
    #[error("a key is not a usable ed25519 key")]
    BadKey,
}

impl CapabilityError {
    /// A fixed name for the kind of refusal (a metric label).
    pub fn label(&self) -> &'static str {
        match self {
            CapabilityError::Invalid(_)
            | CapabilityError::NotACapability(_)
            | CapabilityError::BadDelegation(_)
            | CapabilityError::BadKey => "bad_token",
            CapabilityError::WrongWorkspace { .. } => "wrong_workspace",
            CapabilityError::WrongHolder { .. } => "wrong_holder",
            CapabilityError::Expired => "token_expired",
            CapabilityError::Revoked => "token_revoked",
            CapabilityError::Forbidden { .. } => "forbidden",
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> CapabilityError {
    CapabilityError::Invalid(e.to_string())
}

/// Run limits of the final datalog pass. By then a token holds at most a
/// few facts and expiry checks per block and no rules, so the evaluation
/// takes microseconds; the time limit (which biscuit checks between
/// iterations) is a last fence, generous enough that a busy machine does
/// not turn into spurious denials.
fn limits() -> RunLimits {
    RunLimits {
        max_facts: 64,
        max_iterations: 8,
        max_time: Duration::from_millis(50),
    }
}

fn block_facts(
    builder: BlockBuilder,
    holder_fact: String,
    expires_ms: Option<u64>,
) -> Result<BlockBuilder, CapabilityError> {
    let mut b = builder.fact(holder_fact.as_str()).map_err(invalid)?;
    if let Some(exp) = expires_ms {
        b = b
            .fact(format!("expires({exp})").as_str())
            .map_err(invalid)?
            .check(format!("check if now_ms($t), $t <= {exp}").as_str())
            .map_err(invalid)?;
    }
    Ok(b)
}

/// Mints a token signed by the workspace's root key.
pub fn mint(
    root_secret: &[u8; 32],
    workspace: &WorkspaceId,
    holder: &PeerId,
    role: Role,
    expires_ms: Option<u64>,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, CapabilityError> {
    let root = keypair(root_secret)?;
    let authority = block_facts(
        BlockBuilder::new()
            .fact(format!("workspace(\"{workspace}\")").as_str())
            .map_err(invalid)?,
        format!("holder(\"{holder}\")"),
        expires_ms,
    )?
    .fact(format!("role(\"{}\")", role.as_str()).as_str())
    .map_err(invalid)?;
    let token = Biscuit::builder()
        .merge(authority)
        .build_with_rng(&root, SymbolTable::default(), rng)
        .map_err(invalid)?;
    token.to_vec().map_err(invalid)
}

/// Extends `token` (held by the delegator, an admin) to `holder` with `role`,
/// signing a third-party block with the delegator's key.
#[allow(clippy::too_many_arguments)]
pub fn delegate(
    token: &[u8],
    root_public: &[u8; 32],
    delegator_secret: &[u8; 32],
    workspace: &WorkspaceId,
    holder: &PeerId,
    role: Role,
    expires_ms: Option<u64>,
    now_ms: u64,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, CapabilityError> {
    let delegator = keypair(delegator_secret)?;
    let delegator_peer = peer_of(&delegator.public())?;
    let grant = authorize(
        token,
        root_public,
        workspace,
        &delegator_peer,
        &BTreeSet::new(),
        now_ms,
    )?;
    if !grant.role.allows(Right::Invite) {
        return Err(CapabilityError::Forbidden {
            role: grant.role.as_str(),
            right: Right::Invite,
        });
    }
    if role > grant.role {
        return Err(CapabilityError::BadDelegation(
            "cannot grant more than the delegator holds".into(),
        ));
    }
    let expires_ms = match (expires_ms, grant.expires_ms) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let biscuit = Biscuit::from(token, public_key(root_public)?).map_err(invalid)?;
    let request = biscuit.third_party_request().map_err(invalid)?;
    let block = block_facts(
        BlockBuilder::new(),
        format!("delegate(\"{holder}\", \"{}\")", role.as_str()),
        expires_ms,
    )?;
    let signed = request
        .create_block(&delegator.private(), block)
        .map_err(invalid)?;
    let next = KeyPair::new_with_rng(Algorithm::Ed25519, rng);
    biscuit
        .append_third_party_with_keypair(delegator.public(), signed, next)
        .map_err(invalid)?
        .to_vec()
        .map_err(invalid)
}

/// Largest token accepted, in bytes: eight honest blocks take under 3 KiB.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// A token whose structure, signatures and delegation chain were checked
/// against a root key ([`verify`]): what it grants, to whom, until when.
/// What depends on the request — the workspace asked for, the peer
/// presenting it, revocations, the time — is checked by [`Verified::grant`],
/// which is cheap (no cryptography, no datalog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The workspace the authority block names (as written there).
    pub workspace: String,
    pub holder: PeerId,
    pub role: Role,
    pub expires_ms: Option<u64>,
    pub revocation_ids: Vec<String>,
    pub chain: Vec<PeerId>,
}

impl Verified {
    /// Whether the verified token lets `peer` into `workspace` at `now_ms`,
    /// given the revoked token ids.
    pub fn grant(
        &self,
        workspace: &WorkspaceId,
        peer: &PeerId,
        revoked: &BTreeSet<String>,
        now_ms: u64,
    ) -> Result<Grant, CapabilityError> {
        if self.workspace != workspace.to_string() {
            return Err(CapabilityError::WrongWorkspace {
                token: self.workspace.clone(),
                requested: workspace.to_string(),
            });
        }
        if self.holder != *peer {
            return Err(CapabilityError::WrongHolder {
                holder: self.holder.to_string(),
            });
        }
        if self.revocation_ids.iter().any(|id| revoked.contains(id)) {
            return Err(CapabilityError::Revoked);
        }
        if self.expires_ms.is_some_and(|e| now_ms > e) {
            return Err(CapabilityError::Expired);
        }
        Ok(Grant {
            workspace: *workspace,
            holder: self.holder,
            role: self.role,
            expires_ms: self.expires_ms,
            token_id: self.revocation_ids.last().cloned().unwrap_or_default(),
            revocation_ids: self.revocation_ids.clone(),
            chain: self.chain.clone(),
        })
    }
}

/// Verifies that `token` lets `peer` into `workspace` at `now_ms`, given the
/// revoked token ids: [`verify`], then [`Verified::grant`]. Returns the
/// grant; the caller checks the right it needs with [`Role::allows`].
pub fn authorize(
    token: &[u8],
    root_public: &[u8; 32],
    workspace: &WorkspaceId,
    peer: &PeerId,
    revoked: &BTreeSet<String>,
    now_ms: u64,
) -> Result<Grant, CapabilityError> {
    verify(token, root_public, now_ms)?.grant(workspace, peer, revoked, now_ms)
}

/// Checks a token against the workspace's root key, cheapest checks first,
/// so that a hostile token costs little and can never make the datalog
/// engine work hard:
///
/// 1. size, and the block count read without verifying anything;
/// 2. every block's signature (root key, then each next key);
/// 3. the structure of every block, read as its datalog source and matched
///    against exactly what this module mints — the authority block holds
///    `workspace`, `holder`, `role` and an optional expiry with its check,
///    each later block is a third-party block signed by the holder the
///    chain has reached (who must be an admin) and holds one `delegate`
///    fact and an optional expiry with its check. Any other fact, any rule,
///    any other check, scope or string refuses the token;
/// 4. last, biscuit's own authorizer over what is left (a handful of facts
///    and expiry checks), with tight run limits.
pub fn verify(
    token: &[u8],
    root_public: &[u8; 32],
    now_ms: u64,
) -> Result<Verified, CapabilityError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(CapabilityError::NotACapability(format!(
            "{} bytes; at most {MAX_TOKEN_BYTES}",
            token.len()
        )));
    }
    let blocks = biscuit_auth::UnverifiedBiscuit::from(token)
        .map_err(invalid)?
        .block_count();
    if blocks > MAX_BLOCKS {
        return Err(CapabilityError::BadDelegation(format!(
            "{blocks} blocks; at most {MAX_BLOCKS}"
        )));
    }
    let biscuit = Biscuit::from(token, public_key(root_public)?).map_err(invalid)?;
    let revocation_ids: Vec<String> = biscuit
        .revocation_identifiers()
        .iter()
        .map(hex::encode)
        .collect();
    let authority = Block::parse(&biscuit.print_block_source(0).map_err(invalid)?)?;
    let (Some(workspace), Some(root_holder), Some(root_role), None) = (
        authority.workspace,
        authority.holder,
        authority.role,
        authority.delegate,
    ) else {
        return Err(CapabilityError::NotACapability(
            "the authority block must name exactly one workspace, holder and role".into(),
        ));
    };
    let mut holder: PeerId = root_holder
        .parse()
        .map_err(|_| CapabilityError::NotACapability("the holder is not a peer id".into()))?;
    let mut role = Role::parse(&root_role)
        .ok_or_else(|| CapabilityError::NotACapability(format!("unknown role {root_role:?}")))?;
    let mut expires_ms = authority.expires;
    let mut chain = vec![holder];
    let mut signers = BTreeSet::new();
    for index in 1..blocks {
        let Some(key) = biscuit.block_external_key(index).map_err(invalid)? else {
            return Err(CapabilityError::BadDelegation(format!(
                "block {index} is not signed by a delegator"
            )));
        };
        let key_bytes: [u8; 32] = key
            .to_bytes()
            .as_slice()
            .try_into()
            .map_err(|_| CapabilityError::BadKey)?;
        if peer_of(&key)? != holder {
            return Err(CapabilityError::BadDelegation(format!(
                "block {index} is signed by someone other than {holder}"
            )));
        }
        if !signers.insert(key_bytes) {
            return Err(CapabilityError::BadDelegation(
                "a key signs at most one block".into(),
            ));
        }
        if !role.allows(Right::Invite) {
            return Err(CapabilityError::BadDelegation(format!(
                "{holder} is a {} and cannot invite",
                role.as_str()
            )));
        }
        let block = Block::parse(&biscuit.print_block_source(index).map_err(invalid)?)?;
        let (None, None, None, Some((next_holder, next_role))) =
            (block.workspace, block.holder, block.role, block.delegate)
        else {
            return Err(CapabilityError::BadDelegation(format!(
                "block {index} must delegate to exactly one peer"
            )));
        };
        let next_role = Role::parse(&next_role)
            .ok_or_else(|| CapabilityError::BadDelegation(format!("unknown role {next_role:?}")))?;
        if next_role > role {
            return Err(CapabilityError::BadDelegation(
                "a delegation grants more than its delegator holds".into(),
            ));
        }
        holder = next_holder
            .parse()
            .map_err(|_| CapabilityError::BadDelegation("the delegate is not a peer id".into()))?;
        role = next_role;
        if let Some(e) = block.expires {
            expires_ms = Some(expires_ms.map_or(e, |x| x.min(e)));
        }
        chain.push(holder);
    }
    if expires_ms.is_some_and(|e| now_ms > e) {
        return Err(CapabilityError::Expired);
    }
    // Last, biscuit's own evaluation of what the structure allowed: the
    // facts above and their expiry checks.
    AuthorizerBuilder::new()
        .fact(format!("now_ms({now_ms})").as_str())
        .map_err(invalid)?
        .policy("allow if true")
        .map_err(invalid)?
        .set_limits(limits())
        .build(&biscuit)
        .and_then(|mut a| a.authorize_with_limits(limits()))
        .map_err(|e| match expires_ms {
            Some(exp) if now_ms > exp => CapabilityError::Expired,
            _ => invalid(e),
        })?;
    Ok(Verified {
        workspace,
        holder,
        role,
        expires_ms,
        revocation_ids,
        chain,
    })
}

/// What one block of a token says, read from its datalog source by
/// [`Block::parse`], which accepts only the forms [`mint`] and [`delegate`]
/// write.
#[derive(Debug, Default)]
struct Block {
    workspace: Option<String>,
    holder: Option<String>,
    role: Option<String>,
    delegate: Option<(String, String)>,
    expires: Option<u64>,
}

impl Block {
    /// Parses a block's printed source, item by item (each printed item
    /// ends in `;` and a newline). Every item must be one of the forms this
    /// module writes, with plain alphanumeric strings: a string holding a
    /// quote or a separator, a rule, another check or a second copy of a
    /// fact makes some item fail to match, and the token is refused.
    fn parse(source: &str) -> Result<Self, CapabilityError> {
        let bad = |item: &str| {
            let mut shown: String = item.chars().take(60).collect();
            if shown.len() < item.len() {
                shown.push('…');
            }
            CapabilityError::NotACapability(format!("unexpected datalog in a block: {shown:?}"))
        };
        let mut block = Block::default();
        let mut check = None;
        let body = source.strip_suffix(";\n").unwrap_or(source);
        if body.is_empty() {
            return Err(bad(body));
        }
        for item in body.split(";\n") {
            if let Some(limit) = item.strip_prefix("check if now_ms($t), $t <= ") {
                let t = digits(limit).ok_or_else(|| bad(item))?;
                if check.replace(t).is_some() {
                    return Err(bad(item));
                }
                continue;
            }
            let (name, args) = item
                .strip_suffix(')')
                .and_then(|i| i.split_once('('))
                .ok_or_else(|| bad(item))?;
            let duplicate = match (name, args.split(", ").collect::<Vec<_>>().as_slice()) {
                ("workspace", [w]) => block.workspace.replace(string(w).ok_or_else(|| bad(item))?),
                ("holder", [h]) => block.holder.replace(string(h).ok_or_else(|| bad(item))?),
                ("role", [r]) => block.role.replace(string(r).ok_or_else(|| bad(item))?),
                ("delegate", [h, r]) => block
                    .delegate
                    .replace((
                        string(h).ok_or_else(|| bad(item))?,
                        string(r).ok_or_else(|| bad(item))?,
                    ))
                    .map(|_| String::new()),
                ("expires", [t]) => block
                    .expires
                    .replace(digits(t).ok_or_else(|| bad(item))?)
                    .map(|_| String::new()),
                _ => return Err(bad(item)),
            };
            if duplicate.is_some() {
                return Err(bad(item));
            }
        }
        // An expiry and its check come together, with the same time.
        if check != block.expires {
            return Err(CapabilityError::NotACapability(
                "a block's expiry and its check disagree".into(),
            ));
        }
        Ok(block)
    }
}

/// `"abc"` with only ASCII letters and digits inside (peer ids, workspace
/// ids and role names are all such).
fn string(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.is_empty() && inner.len() <= 128 && inner.bytes().all(|b| b.is_ascii_alphanumeric()))
        .then(|| inner.to_owned())
}

/// A non-negative decimal integer that fits biscuit's i64.
fn digits(s: &str) -> Option<u64> {
    (!s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn keypair(secret: &[u8; 32]) -> Result<KeyPair, CapabilityError> {
    let private =
        PrivateKey::from_bytes(secret, Algorithm::Ed25519).map_err(|_| CapabilityError::BadKey)?;
    Ok(KeyPair::from(&private))
}

fn public_key(bytes: &[u8; 32]) -> Result<PublicKey, CapabilityError> {
    PublicKey::from_bytes(bytes, Algorithm::Ed25519).map_err(|_| CapabilityError::BadKey)
}

fn peer_of(key: &PublicKey) -> Result<PeerId, CapabilityError> {
    let bytes: [u8; 32] = key
        .to_bytes()
        .as_slice()
        .try_into()
        .map_err(|_| CapabilityError::BadKey)?;
    crate::ids::peer_id_of(&bytes).map_err(|_| CapabilityError::BadKey)
}

#[cfg(test)]
mod tests;
