//! A deterministic many-node simulator of Xencode's sync (issue 6): the real
//! `xencode_protocol::sync` engine in every member, over a virtual network of
//! ordered reliable streams with latency, jitter, loss (retransmit or
//! reset), partitions and crashes, a gossip overlay, and the node's own
//! authorization in the loop (`xencode_protocol::policy` over a real access
//! document and real tokens; viewers, revoked and expired members, and
//! malicious members attacking the write rule every way a real one could).
//!
//! It never reads the clock or the OS's randomness: a scenario and a seed
//! give the same report, byte for byte.

pub mod host;
pub mod scenario;
pub mod sim;
pub mod team;

pub use scenario::Scenario;
pub use sim::{Report, Sim};

/// Runs `scenario` with `seed`. A team that cannot be made (which a valid
/// scenario never gives) is reported as a violation.
pub fn run(scenario: &Scenario, seed: u64) -> Report {
    match Sim::new(scenario.clone(), seed) {
        Ok(sim) => sim.run(),
        Err(e) => Report::failed(scenario, seed, format!("cannot make the team: {e}")),
    }
}
