//! Xencode's protocol layer: identifiers, the types that cross the HTTP API and
//! the network, signatures, and the sans-IO sync engine.
//!
//! Architecture invariant: this crate performs no I/O. It has no tokio, libp2p
//! swarm, redb, axum, filesystem, clock or OS randomness; time and randomness
//! are parameters (`protocol/clippy.toml` forbids reading them). It depends on
//! no other crate of the workspace.

pub mod analysis;
pub mod api;
pub mod apply;
pub mod capability;
pub mod card;
pub mod chunks;
pub mod envelope;
pub mod ids;
pub mod invite;
pub mod path;
pub mod policy;
pub mod sync;
pub mod wire;

pub use ids::{DocId, IdParseError, WorkspaceId};
pub use libp2p_identity::PeerId;
pub use path::{PathError, WorkspacePath};
