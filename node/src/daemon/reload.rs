//! Reloading `config.toml` on SIGHUP: what can change while the node runs is
//! applied at once; what cannot (it is bound into a listening socket, the
//! router or the store's open file) is named in the log as needing a restart,
//! and the node keeps its running value.

use std::time::Duration;

use crate::config::Config;

/// How one key of the configuration takes a new value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takes {
    /// Applied by the reload.
    Live,
    /// Kept until the node restarts.
    Restart,
}

/// The keys that differ between `old` and `new`, each with how it takes the
/// new value. Every key of [`Config`] is listed, so a new one cannot be
/// forgotten silently (the unit test below counts them).
pub fn changes(old: &Config, new: &Config) -> Vec<(&'static str, Takes)> {
    use Takes::{Live, Restart};
    let keys: [(&'static str, bool, Takes); 19] = [
        ("node.name", old.node.name != new.node.name, Live),
        ("api.listen", old.api.listen != new.api.listen, Restart),
        (
            "api.max_body_bytes",
            old.api.max_body_bytes != new.api.max_body_bytes,
            Restart,
        ),
        (
            "network.listen",
            old.network.listen != new.network.listen,
            Restart,
        ),
        (
            "network.peers",
            old.network.peers != new.network.peers,
            Live,
        ),
        (
            "network.mdns",
            old.network.mdns != new.network.mdns,
            Restart,
        ),
        (
            "network.relay",
            old.network.relay != new.network.relay,
            Restart,
        ),
        (
            "network.relays",
            old.network.relays != new.network.relays,
            Restart,
        ),
        (
            "network.relay_limits",
            old.network.relay_limits != new.network.relay_limits,
            Restart,
        ),
        (
            "network.lookup",
            old.network.lookup != new.network.lookup,
            Restart,
        ),
        (
            "store.compact_after_changes",
            old.store.compact_after_changes != new.store.compact_after_changes,
            Restart,
        ),
        (
            "store.compact_interval_secs",
            old.store.compact_interval_secs != new.store.compact_interval_secs,
            Live,
        ),
        (
            "store.max_text_bytes",
            old.store.max_text_bytes != new.store.max_text_bytes,
            Restart,
        ),
        (
            "analysis.max_document_bytes",
            old.analysis.max_document_bytes != new.analysis.max_document_bytes,
            Restart,
        ),
        (
            "analysis.timeout_secs",
            old.analysis.timeout_secs != new.analysis.timeout_secs,
            Live,
        ),
        (
            "analysis.max_memory_mib",
            old.analysis.max_memory_mib != new.analysis.max_memory_mib,
            Live,
        ),
        (
            "analysis.ollama_host",
            old.analysis.ollama_host != new.analysis.ollama_host,
            Live,
        ),
        (
            "analysis.ollama_models",
            old.analysis.ollama_models != new.analysis.ollama_models,
            Live,
        ),
        (
            "analysis.ai_timeout_secs",
            old.analysis.ai_timeout_secs != new.analysis.ai_timeout_secs,
            Live,
        ),
    ];
    keys.into_iter()
        .filter(|(_, differs, _)| *differs)
        .map(|(k, _, t)| (k, t))
        .collect()
}

/// The configuration the node runs with after a reload to `new`: the live
/// keys from `new`, the others kept from `running`.
pub fn merge(running: &Config, new: &Config) -> Config {
    let mut merged = running.clone();
    merged.node.name.clone_from(&new.node.name);
    merged.network.peers.clone_from(&new.network.peers);
    merged.store.compact_interval_secs = new.store.compact_interval_secs;
    merged.analysis.timeout_secs = new.analysis.timeout_secs;
    merged.analysis.max_memory_mib = new.analysis.max_memory_mib;
    merged
        .analysis
        .ollama_host
        .clone_from(&new.analysis.ollama_host);
    merged
        .analysis
        .ollama_models
        .clone_from(&new.analysis.ollama_models);
    merged.analysis.ai_timeout_secs = new.analysis.ai_timeout_secs;
    merged
}

/// The analysis setup a configuration describes.
pub fn analysis_setup(config: &Config) -> crate::api::AnalysisSetup {
    crate::api::AnalysisSetup {
        worker: std::env::current_exe().unwrap_or_else(|_| "xencode".into()),
        limits: xencode_analysis::worker::DocLimits {
            max_bytes: config.analysis.max_document_bytes,
            timeout: Duration::from_secs(config.analysis.timeout_secs),
            max_memory_mib: config.analysis.max_memory_mib,
        },
        ollama: xencode_analysis::ai::Client::new(
            xencode_analysis::ai::host(config.analysis.ollama_host.as_deref()),
            Duration::from_secs(config.analysis.ai_timeout_secs),
            2,
        ),
        model_preferences: config.analysis.ollama_models.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every leaf key of the configuration file is in [`changes`].
    #[test]
    fn every_configuration_key_is_classified() {
        let mut all = Config::default();
        all.analysis.ollama_host = Some("http://127.0.0.1:11434".into());
        all.node.name = Some("Ada".into());
        let text = toml::to_string(&all).expect("serialize");
        let table: toml::Table = toml::from_str(&text).expect("parse");
        let leaves: usize = table
            .values()
            .map(|section| section.as_table().map_or(1, toml::Table::len))
            .sum();
        let mut other = all.clone();
        other.api.listen = "127.0.0.1:1".parse().expect("addr");
        other.api.max_body_bytes += 1;
        other.network.listen.clear();
        other.network.peers.push("/ip4/127.0.0.1/tcp/1".into());
        other.network.mdns = !all.network.mdns;
        other.network.relay = !all.network.relay;
        other.network.relays.push(
            "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into(),
        );
        other.network.relay_limits.max_circuits += 1;
        other.network.lookup = !all.network.lookup;
        other.store.compact_after_changes += 1;
        other.store.compact_interval_secs += 1;
        other.store.max_text_bytes += 1;
        other.analysis.max_document_bytes += 1;
        other.analysis.timeout_secs += 1;
        other.analysis.max_memory_mib += 1;
        other.analysis.ollama_host = None;
        other.analysis.ollama_models.clear();
        other.analysis.ai_timeout_secs += 1;
        other.node.name = None;
        assert_eq!(changes(&all, &other).len(), leaves);
    }

    #[test]
    fn live_keys_are_taken_and_the_rest_kept_for_a_restart() {
        let old = Config::default();
        let mut new = old.clone();
        new.analysis.ollama_host = Some("http://127.0.0.1:1".into());
        new.network.peers.push("/ip4/127.0.0.1/tcp/4001".into());
        new.api.listen = "127.0.0.1:9999".parse().expect("addr");
        new.store.max_text_bytes = 1;
        let found = changes(&old, &new);
        assert_eq!(
            found,
            vec![
                ("api.listen", Takes::Restart),
                ("network.peers", Takes::Live),
                ("store.max_text_bytes", Takes::Restart),
                ("analysis.ollama_host", Takes::Live),
            ]
        );
        let merged = merge(&old, &new);
        assert_eq!(merged.analysis.ollama_host, new.analysis.ollama_host);
        assert_eq!(merged.network.peers, new.network.peers);
        assert_eq!(merged.api.listen, old.api.listen, "needs a restart: kept");
        assert_eq!(merged.store.max_text_bytes, old.store.max_text_bytes);
        assert!(
            changes(&merged, &new)
                .iter()
                .all(|(_, t)| *t == Takes::Restart)
        );
        assert!(changes(&old, &old).is_empty());
    }
}
