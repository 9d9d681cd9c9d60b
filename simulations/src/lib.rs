//! A deterministic many-node simulator of Xencode's sync (issue 6): the real
//! `xencode_protocol::sync` engine in every member, over a virtual network of
//! ordered reliable streams with latency, jitter, loss (retransmit or
//! reset), partitions and crashes, a gossip overlay, and authorization in
//! the loop (viewers, revoked members, a member forging and replaying).
//!
//! It never reads the clock or the OS's randomness: a scenario and a seed
//! give the same report, byte for byte.

pub mod host;
pub mod scenario;
pub mod sim;

pub use scenario::Scenario;
pub use sim::{Report, Sim};

/// Runs `scenario` with `seed`.
pub fn run(scenario: &Scenario, seed: u64) -> Report {
    Sim::new(scenario.clone(), seed).run()
}
