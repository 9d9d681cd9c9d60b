//! A scenario, as written in `simulations/scenarios/*.toml`.

use serde::Deserialize;
use xencode_protocol::api::Role;

/// Why a scenario file cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScenarioError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not a valid scenario: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

/// A team, its network and what happens to it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// Team size.
    pub nodes: usize,
    /// Connections each node opens to random others (the mesh degree).
    #[serde(default = "default_degree")]
    pub degree: usize,
    /// Documents in the workspace.
    #[serde(default = "default_docs")]
    pub docs: usize,
    /// Members who only read (the last ones).
    #[serde(default)]
    pub viewers: usize,
    /// How long members edit, in virtual ms.
    pub edit_for_ms: u64,
    /// Mean time between two edits of one writer.
    pub edit_interval_ms: u64,
    /// Writers that edit at all (the first ones); default all writers.
    #[serde(default)]
    pub active_writers: Option<usize>,
    /// One-way latency of every link, and its jitter (uniform, added).
    #[serde(default = "default_latency")]
    pub latency_ms: u64,
    #[serde(default)]
    pub jitter_ms: u64,
    /// Probability that a frame is lost on the wire and retransmitted (the
    /// stream stays ordered; the frame and those behind it wait).
    #[serde(default)]
    pub loss: f64,
    #[serde(default = "default_retransmit")]
    pub retransmit_ms: u64,
    /// Probability that a lost frame instead resets the connection.
    #[serde(default)]
    pub reset_on_loss: f64,
    #[serde(default)]
    pub partitions: Vec<Partition>,
    #[serde(default)]
    pub crashes: Vec<Crash>,
    #[serde(default)]
    pub rolling_crashes: Option<RollingCrashes>,
    /// Members revoked (the last writers) by the root at `revoke_at_ms`;
    /// they keep editing (their node tampered with), and every honest node
    /// must refuse what they write once they have seen their revocation.
    #[serde(default)]
    pub revoked: usize,
    #[serde(default)]
    pub revoke_at_ms: u64,
    /// Members (before the revoked ones) who attack at each of their
    /// edits: changes forged in a teammate's name, changes inside sync
    /// messages, others' refused changes relayed, revoking the root, old
    /// frames replayed. The first, third, ... are admins, the others
    /// developers.
    #[serde(default)]
    pub malicious: usize,
    /// Members (before the malicious ones) whose membership ends at
    /// `expire_at_ms` (their token's expiry); they keep editing, and every
    /// honest node must refuse what they stamp after it.
    #[serde(default)]
    pub expired: usize,
    #[serde(default)]
    pub expire_at_ms: u64,
    /// Time allowed after the last disturbance for everyone to converge.
    #[serde(default = "default_settle")]
    pub settle_ms: u64,
}

/// Who is who: members are numbered honest writers (member 0, the root,
/// first), expired, malicious, revoked, then viewers.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Members that were invited to write (all but the viewers).
    pub writers: usize,
    expired_from: usize,
    malicious_from: usize,
    revoked_from: usize,
    nodes: usize,
}

impl Layout {
    pub fn is_expired(&self, i: usize) -> bool {
        (self.expired_from..self.malicious_from).contains(&i)
    }
    pub fn is_malicious(&self, i: usize) -> bool {
        (self.malicious_from..self.revoked_from).contains(&i)
    }
    pub fn is_revoked(&self, i: usize) -> bool {
        (self.revoked_from..self.writers).contains(&i)
    }
    /// Members whose convergence the invariants require: none of the above
    /// (viewers are honest).
    pub fn is_honest(&self, i: usize) -> bool {
        i < self.expired_from || i >= self.writers
    }
    pub fn expired(&self) -> std::ops::Range<usize> {
        self.expired_from..self.malicious_from
    }
    pub fn revoked(&self) -> std::ops::Range<usize> {
        self.revoked_from..self.writers
    }
    pub fn viewers(&self) -> std::ops::Range<usize> {
        self.writers..self.nodes
    }
    /// The role member `i` is invited with.
    pub fn role(&self, i: usize) -> Role {
        if i == 0 {
            Role::Admin
        } else if i >= self.writers {
            Role::Viewer
        } else if self.is_malicious(i) && (i - self.malicious_from).is_multiple_of(2) {
            Role::Admin
        } else {
            Role::Developer
        }
    }
}

/// A partition from `at_ms` to `heal_ms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partition {
    pub at_ms: u64,
    pub heal_ms: u64,
    /// `halves`, or `isolate` (node `node` alone).
    pub kind: String,
    #[serde(default)]
    pub node: usize,
}

/// One node crashing (losing what it had not persisted) and restarting.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Crash {
    pub node: usize,
    pub at_ms: u64,
    pub restart_ms: u64,
}

/// Nodes crash one after another: every `every_ms` the next one goes down
/// for `down_ms`, from `from_ms` to `until_ms`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollingCrashes {
    pub from_ms: u64,
    pub until_ms: u64,
    pub every_ms: u64,
    pub down_ms: u64,
}

fn default_degree() -> usize {
    4
}
fn default_docs() -> usize {
    3
}
fn default_latency() -> u64 {
    2
}
fn default_retransmit() -> u64 {
    200
}
fn default_settle() -> u64 {
    120_000
}

impl Scenario {
    /// Who is who in this scenario.
    pub fn layout(&self) -> Layout {
        let writers = self.nodes - self.viewers;
        let revoked_from = writers - self.revoked;
        let malicious_from = revoked_from - self.malicious;
        Layout {
            writers,
            expired_from: malicious_from - self.expired,
            malicious_from,
            revoked_from,
            nodes: self.nodes,
        }
    }

    /// Reads and checks a scenario file.
    pub fn load(path: &str) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.into(),
            source,
        })?;
        let s: Scenario = toml::from_str(&text).map_err(|source| ScenarioError::Parse {
            path: path.into(),
            source,
        })?;
        s.check().map_err(|message| ScenarioError::Invalid {
            path: path.into(),
            message,
        })?;
        Ok(s)
    }

    fn check(&self) -> Result<(), String> {
        if self.nodes < 2 || self.nodes > 100_000 {
            return Err(format!("nodes = {} (2 to 100000)", self.nodes));
        }
        if self.viewers + self.revoked + self.malicious + self.expired >= self.nodes {
            return Err(
                "viewers + revoked + malicious + expired must leave honest writers (member 0, the root, among them)"
                    .into(),
            );
        }
        if self.docs == 0 || self.edit_interval_ms == 0 {
            return Err("docs and edit_interval_ms must be positive".into());
        }
        if !(0.0..=1.0).contains(&self.loss) || !(0.0..=1.0).contains(&self.reset_on_loss) {
            return Err("loss and reset_on_loss are probabilities".into());
        }
        for p in &self.partitions {
            if p.heal_ms <= p.at_ms || !matches!(p.kind.as_str(), "halves" | "isolate") {
                return Err(format!("bad partition {p:?}"));
            }
        }
        for c in &self.crashes {
            if c.node >= self.nodes || c.restart_ms <= c.at_ms {
                return Err(format!("bad crash {c:?}"));
            }
        }
        Ok(())
    }
}
