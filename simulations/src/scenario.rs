//! A scenario, as written in `simulations/scenarios/*.toml`.

use serde::Deserialize;

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
    /// Members revoked (the last writers) at `revoke_at_ms`; they keep
    /// editing, and every honest node must refuse those edits.
    #[serde(default)]
    pub revoked: usize,
    #[serde(default)]
    pub revoke_at_ms: u64,
    /// Members who also forge changes in another member's name and replay
    /// old frames.
    #[serde(default)]
    pub malicious: usize,
    /// Time allowed after the last disturbance for everyone to converge.
    #[serde(default = "default_settle")]
    pub settle_ms: u64,
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
        if self.viewers + self.revoked + self.malicious >= self.nodes {
            return Err("viewers + revoked + malicious must leave honest writers".into());
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
