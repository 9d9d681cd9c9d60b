//! The Xencode node: identity, configuration, the redb-backed workspace store,
//! the local HTTP API, and the CLI that drives them.
//!
//! Architecture invariants (see `docs/ARCHITECTURE.md`):
//! - Nothing in the workspace depends on this crate (`fuzz/`, outside it,
//!   does, through the `fuzzing` feature).
//! - The store is owned by one actor thread (`store`); the API, the CLI and
//!   the network task reach it only through its two bounded queues (local
//!   commands first, then network input).
//! - The API binds loopback only and authenticates every request but `/health`
//!   and the dashboard's static page.

#[cfg(feature = "server")]
pub mod api;
pub mod config;
// The fuzz targets' entry points: built for `fuzz/` (feature `fuzzing`) and
// for the unit tests that replay the corpora, never into the shipped binary.
#[cfg(feature = "server")]
pub mod daemon;
#[cfg(feature = "server")]
pub mod folder;
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod identity;
pub mod metrics;
pub mod net;
pub mod paths;
pub mod store;
pub mod workspace;

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
