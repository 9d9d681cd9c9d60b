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

fn invalid(e: impl std::fmt::Display) -> CapabilityError {
    CapabilityError::Invalid(e.to_string())
}

fn limits() -> RunLimits {
    RunLimits {
        max_facts: 256,
        max_iterations: 64,
        // Generous: a busy machine must not turn into spurious denials.
        max_time: Duration::from_millis(200),
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
    let mut b = Biscuit::builder()
        .fact(format!("workspace(\"{workspace}\")").as_str())
        .map_err(invalid)?
        .fact(format!("holder(\"{holder}\")").as_str())
        .map_err(invalid)?
        .fact(format!("role(\"{}\")", role.as_str()).as_str())
        .map_err(invalid)?;
    if let Some(exp) = expires_ms {
        b = b
            .fact(format!("expires({exp})").as_str())
            .map_err(invalid)?
            .check(format!("check if now_ms($t), $t <= {exp}").as_str())
            .map_err(invalid)?;
    }
    let token = b
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

/// Verifies that `token` lets `peer` into `workspace` at `now_ms`, given the
/// revoked token ids. Returns the grant; the caller checks the right it needs
/// with [`Role::allows`].
pub fn authorize(
    token: &[u8],
    root_public: &[u8; 32],
    workspace: &WorkspaceId,
    peer: &PeerId,
    revoked: &BTreeSet<String>,
    now_ms: u64,
) -> Result<Grant, CapabilityError> {
    let biscuit = Biscuit::from(token, public_key(root_public)?).map_err(invalid)?;
    let blocks = biscuit.block_count();
    if blocks > MAX_BLOCKS {
        return Err(CapabilityError::BadDelegation(format!(
            "{blocks} blocks; at most {MAX_BLOCKS}"
        )));
    }
    let revocation_ids: Vec<String> = biscuit
        .revocation_identifiers()
        .iter()
        .map(hex::encode)
        .collect();
    if revocation_ids.iter().any(|id| revoked.contains(id)) {
        return Err(CapabilityError::Revoked);
    }
    let mut authorizer = AuthorizerBuilder::new()
        .fact(format!("now_ms({now_ms})").as_str())
        .map_err(invalid)?
        .policy("allow if true")
        .map_err(invalid)?
        .set_limits(limits())
        .build(&biscuit)
        .map_err(invalid)?;
    let authority: Vec<(String, String, String)> = authorizer
        .query_with_limits(
            "cap($w, $h, $r) <- workspace($w), holder($h), role($r)",
            limits(),
        )
        .map_err(invalid)?;
    let [(token_ws, root_holder, root_role)] = authority.as_slice() else {
        return Err(CapabilityError::NotACapability(
            "the authority block must name exactly one workspace, holder and role".into(),
        ));
    };
    if token_ws != &workspace.to_string() {
        return Err(CapabilityError::WrongWorkspace {
            token: token_ws.clone(),
            requested: workspace.to_string(),
        });
    }
    let mut holder: PeerId = root_holder
        .parse()
        .map_err(|_| CapabilityError::NotACapability("the holder is not a peer id".into()))?;
    let mut role = Role::parse(root_role)
        .ok_or_else(|| CapabilityError::NotACapability(format!("unknown role {root_role:?}")))?;
    let mut expires_ms = query_expiry(&mut authorizer, None)?;
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
        let scope = format!("trusting ed25519/{}", hex::encode(key_bytes));
        let delegated: Vec<(String, String)> = authorizer
            .query_with_limits(
                format!("d($h, $r) <- delegate($h, $r) {scope}").as_str(),
                limits(),
            )
            .map_err(invalid)?;
        let [(next_holder, next_role)] = delegated.as_slice() else {
            return Err(CapabilityError::BadDelegation(format!(
                "block {index} must delegate to exactly one peer"
            )));
        };
        let next_role = Role::parse(next_role)
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
        if let Some(e) = query_expiry(&mut authorizer, Some(&scope))? {
            expires_ms = Some(expires_ms.map_or(e, |x| x.min(e)));
        }
        chain.push(holder);
    }
    if expires_ms.is_some_and(|e| now_ms > e) {
        return Err(CapabilityError::Expired);
    }
    // Runs every check of every block (expiry checks among them).
    authorizer.authorize().map_err(|e| match expires_ms {
        Some(exp) if now_ms > exp => CapabilityError::Expired,
        _ => invalid(e),
    })?;
    if holder != *peer {
        return Err(CapabilityError::WrongHolder {
            holder: holder.to_string(),
        });
    }
    Ok(Grant {
        workspace: *workspace,
        holder,
        role,
        expires_ms,
        token_id: revocation_ids.last().cloned().unwrap_or_default(),
        revocation_ids,
        chain,
    })
}

fn query_expiry(
    authorizer: &mut biscuit_auth::Authorizer,
    scope: Option<&str>,
) -> Result<Option<u64>, CapabilityError> {
    let rule = match scope {
        Some(s) => format!("e($t) <- expires($t) {s}"),
        None => "e($t) <- expires($t)".to_owned(),
    };
    let found: Vec<(i64,)> = authorizer
        .query_with_limits(rule.as_str(), limits())
        .map_err(invalid)?;
    Ok(found
        .iter()
        .map(|(t,)| u64::try_from(*t).unwrap_or(0))
        .min())
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
