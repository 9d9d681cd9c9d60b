//! `config.toml` plus `XENCODE_*` environment overrides, validated.
//!
//! Precedence, lowest first: built-in defaults, `<data-dir>/config.toml`,
//! environment variables, command-line flags (applied by the CLI).

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use multiaddr::Multiaddr;
use serde::{Deserialize, Serialize};

/// Environment variables that are not configuration keys but are known.
const KNOWN_NON_CONFIG_VARS: &[&str] =
    &["XENCODE_HOME", "XENCODE_REQUIRE_ALL_TESTS", "XENCODE_LOG"];

/// A configuration problem, with what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}={value:?} is not valid: {why}")]
    Env {
        var: String,
        value: String,
        why: String,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The most `store.max_text_bytes` may be: very large texts stall the store.
pub const MAX_TEXT_BYTES_CAP: u64 = 64 << 20;

/// The node's effective configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub node: NodeConfig,
    pub api: ApiConfig,
    pub network: NetworkConfig,
    pub store: StoreConfig,
    pub analysis: AnalysisConfig,
}

/// `[node]`: this node as people see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The display name teammates see for this node (`xencode init
    /// --name`): written into this node's member entry of every workspace
    /// it belongs to. Up to 64 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `[analysis]`: limits of document extraction (which runs in a child
/// process) and code analysis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisConfig {
    /// Largest document accepted by `doc add`, in bytes.
    pub max_document_bytes: u64,
    /// Longest an extraction or a parse may run, in seconds.
    pub timeout_secs: u64,
    /// Address-space limit of the extraction process, in MiB.
    pub max_memory_mib: u64,
    /// Ollama's URL; unset: `OLLAMA_HOST`, else http://127.0.0.1:11434.
    pub ollama_host: Option<String>,
    /// Models to prefer for AI reviews, first available wins (`name` or
    /// `name:tag`); otherwise the largest that fits this machine.
    pub ollama_models: Vec<String>,
    /// Longest an AI answer may take, in seconds.
    pub ai_timeout_secs: u64,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        Self {
            max_document_bytes: 50 * 1024 * 1024,
            timeout_secs: 30,
            max_memory_mib: 2048,
            ollama_host: None,
            ollama_models: vec!["qwen2.5-coder".into(), "llama3.2".into()],
            ai_timeout_secs: 120,
        }
    }
}

/// `[api]`: the local HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Loopback address and port; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Largest request body, in bytes (a file upload is one body).
    pub max_body_bytes: u64,
}

/// `[network]`: libp2p.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Multiaddrs of peers to dial at start.
    pub peers: Vec<String>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// Serve libp2p circuit relay v2 to members of the workspaces this node
    /// holds (never to strangers), so members behind NATs reach each other
    /// through this node.
    pub relay: bool,
    /// Relays to hold a reservation on, so that members can reach this node
    /// through them: multiaddrs ending in `/p2p/<peer id>` of members that
    /// run with `relay = true`.
    pub relays: Vec<String>,
    /// What a relay (`relay = true`) gives at most.
    pub relay_limits: RelayLimits,
    /// Look members up by peer id (Kademlia among members) when no known
    /// address of theirs answers. A lookup tells the asking member where
    /// this node's other teammates are, so a node whose workspaces have
    /// members who should not learn of each other can turn it off.
    pub lookup: bool,
}

/// `[network.relay_limits]`: the cost a relaying node accepts. Defaults
/// keep a laptop relay cheap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayLimits {
    /// Reservations held at once (one per member reachable through us).
    pub max_reservations: usize,
    /// Circuits open at once, in all.
    pub max_circuits: usize,
    /// Circuits open at once per source peer.
    pub max_circuits_per_peer: usize,
    /// A circuit is cut after this many seconds (its peers reconnect).
    pub max_circuit_secs: u64,
    /// A circuit is cut after this many bytes, both ways together.
    pub max_circuit_bytes: u64,
    /// Bytes per second the relay carries, all circuits and both ways
    /// together (0: no limit); a circuit over it waits, it is not cut.
    pub max_bytes_per_sec: u64,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            max_reservations: 64,
            max_circuits: 32,
            max_circuits_per_peer: 4,
            max_circuit_secs: 30 * 60,
            max_circuit_bytes: 256 << 20,
            max_bytes_per_sec: 1 << 20,
        }
    }
}

/// `[store]`: the redb store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Compact a document into a snapshot once it has this many change
    /// records, and every document with records once the store holds this
    /// many in all.
    pub compact_after_changes: u64,
    /// Also compact every document with change records this often, in seconds.
    pub compact_interval_secs: u64,
    /// UTF-8 files up to this many bytes are kept as Automerge Text (concurrent
    /// character edits merge); larger files are stored whole (last write wins).
    pub max_text_bytes: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7420)),
            max_body_bytes: 8 * 1024 * 1024,
        }
    }
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                "/ip4/0.0.0.0/tcp/7421".into(),
                "/ip4/0.0.0.0/udp/7421/quic-v1".into(),
            ],
            peers: Vec::new(),
            mdns: true,
            relay: false,
            relays: Vec::new(),
            relay_limits: RelayLimits::default(),
            lookup: true,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            compact_after_changes: 1000,
            compact_interval_secs: 300,
            max_text_bytes: 1 << 20,
        }
    }
}

impl Config {
    /// The text `init` writes: the defaults, with comments.
    pub fn default_file_text() -> String {
        let body = toml::to_string_pretty(&Config::default()).unwrap_or_default();
        format!(
            "# Xencode node configuration. Every key is optional; shown are the defaults.\n\
             # Each key can be overridden by an environment variable named after it,\n\
             # e.g. XENCODE_API_LISTEN, XENCODE_NETWORK_MDNS, XENCODE_STORE_COMPACT_AFTER_CHANGES.\n\n{body}"
        )
    }

    /// Reads `path` (defaults if absent), applies the process environment and
    /// validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config = Self::from_file(path)?;
        config.apply_env(std::env::vars())?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a config file; a missing file means the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        match fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Parses the text of a config file (`path` names it in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    /// Applies `XENCODE_<SECTION>_<KEY>` overrides from `vars`. Lists are
    /// comma-separated. Unknown `XENCODE_*` variables are warned about.
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (var, value) in vars {
            let Some(key) = var.strip_prefix("XENCODE_") else {
                continue;
            };
            let bad = |why: String| ConfigError::Env {
                var: var.clone(),
                value: value.clone(),
                why,
            };
            match key {
                "NODE_NAME" => self.node.name = Some(value.clone()),
                "API_LISTEN" => {
                    self.api.listen = value
                        .parse()
                        .map_err(|_| bad("expected IP:PORT, e.g. 127.0.0.1:7420".into()))?
                }
                "API_MAX_BODY_BYTES" => self.api.max_body_bytes = parse_u64(&value).map_err(bad)?,
                "NETWORK_LISTEN" => self.network.listen = split_list(&value),
                "NETWORK_PEERS" => self.network.peers = split_list(&value),
                "NETWORK_MDNS" => self.network.mdns = parse_bool(&value).map_err(bad)?,
                "NETWORK_RELAY" => self.network.relay = parse_bool(&value).map_err(bad)?,
                "NETWORK_RELAYS" => self.network.relays = split_list(&value),
                "NETWORK_LOOKUP" => self.network.lookup = parse_bool(&value).map_err(bad)?,
                "STORE_COMPACT_AFTER_CHANGES" => {
                    self.store.compact_after_changes = parse_u64(&value).map_err(bad)?
                }
                "STORE_COMPACT_INTERVAL_SECS" => {
                    self.store.compact_interval_secs = parse_u64(&value).map_err(bad)?
                }
                "STORE_MAX_TEXT_BYTES" => {
                    self.store.max_text_bytes = parse_u64(&value).map_err(bad)?
                }
                "ANALYSIS_MAX_DOCUMENT_BYTES" => {
                    self.analysis.max_document_bytes = parse_u64(&value).map_err(bad)?
                }
                "ANALYSIS_TIMEOUT_SECS" => {
                    self.analysis.timeout_secs = parse_u64(&value).map_err(bad)?
                }
                "ANALYSIS_OLLAMA_HOST" => self.analysis.ollama_host = Some(value.clone()),
                "ANALYSIS_OLLAMA_MODELS" => self.analysis.ollama_models = split_list(&value),
                "ANALYSIS_AI_TIMEOUT_SECS" => {
                    self.analysis.ai_timeout_secs = parse_u64(&value).map_err(bad)?
                }
                "ANALYSIS_MAX_MEMORY_MIB" => {
                    self.analysis.max_memory_mib = parse_u64(&value).map_err(bad)?
                }
                _ if KNOWN_NON_CONFIG_VARS.contains(&var.as_str()) => {}
                _ => tracing::warn!(%var, "unknown XENCODE_* environment variable ignored"),
            }
        }
        Ok(())
    }

    /// Checks every value; the message says which key and what is allowed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if let Some(name) = &self.node.name
            && !xencode_protocol::policy::valid_member_name(name)
        {
            return invalid(format!(
                "node.name = {name:?} must be 1 to {} characters, not only spaces, with no control characters",
                xencode_protocol::policy::MAX_MEMBER_NAME_CHARS
            ));
        }
        if !self.api.listen.ip().is_loopback() {
            return invalid(format!(
                "api.listen = {} is not a loopback address; the API is local-only, use 127.0.0.1 or [::1]",
                self.api.listen
            ));
        }
        if !(1024..=1 << 30).contains(&self.api.max_body_bytes) {
            return invalid(format!(
                "api.max_body_bytes = {} must be between 1024 and 1073741824",
                self.api.max_body_bytes
            ));
        }
        for (key, list) in [
            ("network.listen", &self.network.listen),
            ("network.peers", &self.network.peers),
            ("network.relays", &self.network.relays),
        ] {
            for addr in list {
                if let Err(e) = addr.parse::<Multiaddr>() {
                    return invalid(format!(
                        "{key}: {addr:?} is not a multiaddr ({e}); example: /ip4/127.0.0.1/tcp/7421"
                    ));
                }
            }
        }
        for addr in &self.network.relays {
            let ends_in_peer = addr
                .parse::<Multiaddr>()
                .ok()
                .is_some_and(|a| matches!(a.iter().last(), Some(multiaddr::Protocol::P2p(_))));
            if !ends_in_peer {
                return invalid(format!(
                    "network.relays: {addr:?} must end in the relay's peer id, e.g. /ip4/198.51.100.7/tcp/7421/p2p/12D3KooW… (`xencode status` on the relay prints it)"
                ));
            }
        }
        let limits = &self.network.relay_limits;
        if limits.max_reservations == 0
            || limits.max_circuits == 0
            || limits.max_circuits_per_peer == 0
        {
            return invalid(
                "network.relay_limits: max_reservations, max_circuits and max_circuits_per_peer must be at least 1 (turn relaying off with network.relay = false)".into(),
            );
        }
        if !(10..=24 * 3600).contains(&limits.max_circuit_secs) {
            return invalid(
                "network.relay_limits.max_circuit_secs must be between 10 and 86400".into(),
            );
        }
        if limits.max_circuit_bytes < 1 << 16 {
            return invalid("network.relay_limits.max_circuit_bytes must be at least 65536".into());
        }
        if self.store.compact_after_changes == 0 {
            return invalid("store.compact_after_changes must be at least 1".into());
        }
        if self.store.max_text_bytes > MAX_TEXT_BYTES_CAP {
            return invalid(format!(
                "store.max_text_bytes = {} is over the 67108864 limit: very large texts stall the store",
                self.store.max_text_bytes
            ));
        }
        if self.store.compact_interval_secs == 0 {
            return invalid("store.compact_interval_secs must be at least 1".into());
        }
        if !(1..=1 << 32).contains(&self.analysis.max_document_bytes) {
            return invalid("analysis.max_document_bytes must be between 1 and 4294967296".into());
        }
        if !(1..=3600).contains(&self.analysis.timeout_secs) {
            return invalid("analysis.timeout_secs must be between 1 and 3600".into());
        }
        if !(1..=3600).contains(&self.analysis.ai_timeout_secs) {
            return invalid("analysis.ai_timeout_secs must be between 1 and 3600".into());
        }
        if !(64..=1 << 20).contains(&self.analysis.max_memory_mib) {
            return invalid("analysis.max_memory_mib must be between 64 and 1048576".into());
        }
        Ok(())
    }

    /// The configuration as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_u64(value: &str) -> Result<u64, String> {
    value
        .trim()
        .parse()
        .map_err(|_| "expected a non-negative whole number".to_owned())
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_default_file_parses_back_to_the_defaults() {
        let parsed: Config = toml::from_str(&Config::default_file_text()).expect("parse");
        assert_eq!(parsed, Config::default());
        parsed.validate().expect("valid");
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut c: Config = toml::from_str("[network]\nmdns = true\n").expect("parse");
        c.apply_env(env(&[
            ("XENCODE_NETWORK_MDNS", "false"),
            ("XENCODE_API_LISTEN", "127.0.0.1:0"),
            (
                "XENCODE_NETWORK_PEERS",
                "/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2",
            ),
            ("PATH", "/bin"),
        ]))
        .expect("apply");
        assert!(!c.network.mdns);
        assert_eq!(c.api.listen.port(), 0);
        assert_eq!(c.network.peers.len(), 2);
        c.validate().expect("valid");
    }

    #[test]
    fn bad_values_get_messages_naming_the_key() {
        let unknown = toml::from_str::<Config>("[api]\nlisten_on = 1\n").expect_err("unknown key");
        assert!(unknown.to_string().contains("listen_on"), "{unknown}");

        let mut c = Config::default();
        let err = c
            .apply_env(env(&[("XENCODE_NETWORK_MDNS", "maybe")]))
            .expect_err("bad bool");
        assert!(err.to_string().contains("XENCODE_NETWORK_MDNS"), "{err}");

        c.api.listen = "0.0.0.0:7420".parse().expect("addr");
        let err = c.validate().expect_err("public bind");
        assert!(err.to_string().contains("loopback"), "{err}");

        let mut c = Config::default();
        c.network.peers = vec!["not-an-address".into()];
        let err = c.validate().expect_err("bad multiaddr");
        assert!(err.to_string().contains("network.peers"), "{err}");
    }

    #[test]
    fn relays_name_their_peer_and_relay_limits_stay_usable() {
        let mut c: Config =
            toml::from_str("[network]\nrelay = true\n[network.relay_limits]\nmax_circuits = 8\n")
                .expect("parse");
        assert!(c.network.relay);
        assert_eq!(c.network.relay_limits.max_circuits, 8);
        assert_eq!(c.network.relay_limits.max_reservations, 64);
        c.apply_env(env(&[(
            "XENCODE_NETWORK_RELAYS",
            "/ip4/10.0.0.1/tcp/7421/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
        )]))
        .expect("apply");
        c.validate().expect("valid");

        c.network.relays = vec!["/ip4/10.0.0.1/tcp/7421".into()];
        let err = c.validate().expect_err("a relay without its peer id");
        assert!(err.to_string().contains("peer id"), "{err}");

        c.network.relays.clear();
        c.network.relay_limits.max_circuits = 0;
        let err = c.validate().expect_err("no circuits");
        assert!(err.to_string().contains("relay_limits"), "{err}");
    }
}
