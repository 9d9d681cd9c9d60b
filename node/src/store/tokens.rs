//! Capability tokens, verified off the store thread.
//!
//! Verifying a token — its size and block count, every signature, the
//! structure of every block, a last datalog pass — is the costliest thing a
//! stranger can make a node do, so it never runs on the store's thread: the
//! network task verifies the token of every `Open` and `Accept` frame, and
//! the API the invitation of every `join`, on tokio's blocking pool, before
//! the store sees them. Results are cached here under (root key, token
//! hash); the store's admission only reads the cache and makes the cheap
//! checks that depend on the request (workspace, holder, revocations,
//! expiry). A token the cache does not hold is refused like a bad one.
//!
//! The cache is bounded: tokens that verified and tokens that failed are
//! kept apart, so a flood of bad tokens can push out only bad ones, and
//! either part starts afresh when full (a genuine token pushed out is
//! verified again when its holder next opens a session).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use xencode_protocol::WorkspaceId;
use xencode_protocol::capability::{self, CapabilityError, Verified};

/// Cached results of each kind before that kind starts afresh.
const MAX_CACHED: usize = 4096;

/// What verifying one token gave.
pub type Verification = Result<Arc<Verified>, CapabilityError>;

/// Verified tokens and the root keys to verify them against, shared by the
/// store, the network task and the API.
#[derive(Debug, Default)]
pub struct TokenVerifier {
    roots: RwLock<HashMap<WorkspaceId, [u8; 32]>>,
    good: Mutex<HashMap<[u8; 32], Arc<Verified>>>,
    bad: Mutex<HashMap<[u8; 32], CapabilityError>>,
}

fn key(root: &[u8; 32], token: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("xencode 2026 verified token v1");
    h.update(root);
    h.update(token);
    *h.finalize().as_bytes()
}

impl TokenVerifier {
    /// The root keys of the workspaces this node holds (published by the
    /// store whenever its workspaces or access documents change).
    pub(super) fn set_roots(&self, roots: HashMap<WorkspaceId, [u8; 32]>) {
        if let Ok(mut r) = self.roots.write() {
            *r = roots;
        }
    }

    /// The root key of `ws`, if this node holds it.
    pub fn root(&self, ws: &WorkspaceId) -> Option<[u8; 32]> {
        self.roots.read().ok()?.get(ws).copied()
    }

    /// Verifies `token` against `root` (or finds it verified already).
    /// Blocking: run it off the async threads and never on the store's.
    pub fn verify(&self, root: &[u8; 32], token: &[u8], now_ms: u64) -> Verification {
        if let Some(done) = self.cached(root, token) {
            return done;
        }
        let k = key(root, token);
        let outcome = capability::verify(token, root, now_ms).map(Arc::new);
        match &outcome {
            Ok(v) => remember(&self.good, k, v.clone()),
            Err(e) => remember(&self.bad, k, e.clone()),
        }
        outcome
    }

    /// The result of an earlier [`verify`](Self::verify) of `token`
    /// against `root`, if it is still cached.
    pub fn cached(&self, root: &[u8; 32], token: &[u8]) -> Option<Verification> {
        let k = key(root, token);
        if let Some(v) = self.good.lock().ok()?.get(&k) {
            return Some(Ok(v.clone()));
        }
        self.bad.lock().ok()?.get(&k).map(|e| Err(e.clone()))
    }
}

fn remember<T>(map: &Mutex<HashMap<[u8; 32], T>>, k: [u8; 32], value: T) {
    if let Ok(mut m) = map.lock() {
        if m.len() >= MAX_CACHED {
            m.clear();
        }
        m.insert(k, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;
    use xencode_protocol::api::Role;
    use xencode_protocol::ids::peer_id_of;

    #[test]
    fn results_are_cached_and_bad_tokens_cannot_push_out_good_ones() {
        let secret = [9u8; 32];
        let root = ed25519_dalek::SigningKey::from_bytes(&secret)
            .verifying_key()
            .to_bytes();
        let ws = WorkspaceId::from_bytes([1; 16]);
        let holder = peer_id_of(&[3; 32]).expect("peer");
        let token =
            capability::mint(&secret, &ws, &holder, Role::Viewer, None, &mut OsRng).expect("mint");
        let tokens = TokenVerifier::default();
        assert!(tokens.cached(&root, &token).is_none());
        assert!(tokens.verify(&root, &token, 1).is_ok());
        for i in 0..(MAX_CACHED + 10) {
            let junk = (i as u64).to_le_bytes();
            assert!(tokens.verify(&root, &junk, 1).is_err());
        }
        assert!(matches!(tokens.cached(&root, &token), Some(Ok(_))));
        // Cached under its root: another root knows nothing of it.
        assert!(tokens.cached(&[7; 32], &token).is_none());
    }
}
