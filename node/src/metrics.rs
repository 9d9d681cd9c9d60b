//! The node's Prometheus registry (`prometheus` crate; one registry per node,
//! never the global default, so tests can run several nodes in one process).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric the node exports, under the `xencode_` prefix.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    api_requests: IntCounterVec,
    api_duration: HistogramVec,
    store_commits: IntCounterVec,
    store_commit_duration: HistogramVec,
    workspaces: IntGauge,
    store_size: IntGauge,
    documents: IntGaugeVec,
    changes_applied: IntCounter,
    chunks_applied: IntCounter,
    changes_rejected: IntCounterVec,
    sessions_refused: IntCounterVec,
    peers_connected: IntGauge,
    sync_frames: IntCounterVec,
    sync_bytes: IntCounterVec,
    gossip_messages: IntCounterVec,
    peer_violations: IntCounterVec,
    analysis_duration: HistogramVec,
    ai_cache: IntCounterVec,
    propagation: prometheus::Histogram,
    ollama_duration: HistogramVec,
    audit_entries: IntCounterVec,
    event_subscribers: IntGauge,
    relay_reservations: IntGauge,
    relay_circuits: IntGauge,
    relay_requests: IntCounterVec,
    relayed_bytes: IntCounterVec,
    relay_carried: IntCounter,
    relay_paced: IntCounter,
    peer_lookups: IntCounterVec,
    hole_punches: IntCounterVec,
}

/// Latency buckets from 50 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("xencode".into()), None)?;
        let api_requests = IntCounterVec::new(
            Opts::new(
                "api_requests_total",
                "HTTP API requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let api_duration = HistogramVec::new(
            HistogramOpts::new(
                "api_request_duration_seconds",
                "HTTP API request duration by route",
            )
            .buckets(BUCKETS.to_vec()),
            &["route", "method"],
        )?;
        let store_commits = IntCounterVec::new(
            Opts::new("store_commits_total", "durable store commits by outcome"),
            &["outcome"],
        )?;
        let store_commit_duration = HistogramVec::new(
            HistogramOpts::new(
                "store_commit_duration_seconds",
                "durable store commit latency",
            )
            .buckets(BUCKETS.to_vec()),
            &["outcome"],
        )?;
        let workspaces = IntGauge::new("workspaces", "workspaces held by this node")?;
        let store_size = IntGauge::new("store_size_bytes", "size of the redb store file")?;
        let documents = IntGaugeVec::new(
            Opts::new(
                "documents",
                "file documents held, by state: loaded in memory, or parked as their snapshot",
            ),
            &["state"],
        )?;
        let changes_applied = IntCounter::new(
            "changes_applied_total",
            "changes received from peers and applied",
        )?;
        let chunks_applied = IntCounter::new(
            "sync_chunks_applied_total",
            "documents replaced whole by a peer's checked catch-up chunk",
        )?;
        let changes_rejected = IntCounterVec::new(
            Opts::new(
                "changes_rejected_total",
                "changes received from peers and refused, by reason",
            ),
            &["reason"],
        )?;
        let sessions_refused = IntCounterVec::new(
            Opts::new(
                "sessions_refused_total",
                "sync sessions refused, by this node (by why) or by the peer",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(sessions_refused.clone()))?;
        for reason in xencode_protocol::policy::ADMIT_LABELS
            .iter()
            .chain(&["refused_by_peer"])
        {
            sessions_refused.with_label_values(&[*reason]);
        }
        let peers_connected = IntGauge::new("peers_connected", "peers with a live connection")?;
        let sync_frames = IntCounterVec::new(
            Opts::new("sync_messages_total", "sync frames by direction"),
            &["direction"],
        )?;
        let sync_bytes = IntCounterVec::new(
            Opts::new("sync_bytes_total", "sync frame bytes by direction"),
            &["direction"],
        )?;
        let gossip_messages = IntCounterVec::new(
            Opts::new(
                "gossip_messages_total",
                "gossip announcements by direction and outcome",
            ),
            &["direction", "outcome"],
        )?;
        let peer_violations = IntCounterVec::new(
            Opts::new(
                "peer_violations_total",
                "protocol violations by peers, by kind",
            ),
            &["kind"],
        )?;
        let analysis_duration = HistogramVec::new(
            HistogramOpts::new(
                "analysis_duration_seconds",
                "local analysis duration by kind (code, document)",
            )
            .buckets(BUCKETS.to_vec()),
            &["kind"],
        )?;
        registry.register(Box::new(analysis_duration.clone()))?;
        let ai_cache = IntCounterVec::new(
            Opts::new("ai_cache_total", "AI answers served from the cache or not"),
            &["result"],
        )?;
        registry.register(Box::new(ai_cache.clone()))?;
        for result in ["hit", "miss"] {
            ai_cache.with_label_values(&[result]);
        }
        let propagation = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "propagation_latency_seconds",
                "from a peer sending changes to this node applying them (by the peer's clock, clamped at 0)",
            )
            .buckets(BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(propagation.clone()))?;
        let ollama_duration = HistogramVec::new(
            HistogramOpts::new(
                "ollama_request_duration_seconds",
                "requests to the local Ollama by operation (review, summary) and outcome (ai.status)",
            )
            .buckets(BUCKETS.to_vec()),
            &["operation", "status"],
        )?;
        registry.register(Box::new(ollama_duration.clone()))?;
        let audit_entries = IntCounterVec::new(
            Opts::new(
                "audit_entries_total",
                "authorization decisions appended to the audit log",
            ),
            &["decision"],
        )?;
        registry.register(Box::new(audit_entries.clone()))?;
        for decision in ["allow", "deny"] {
            audit_entries.with_label_values(&[decision]);
        }
        let event_subscribers =
            IntGauge::new("event_subscribers", "clients following GET /api/v1/events")?;
        registry.register(Box::new(event_subscribers.clone()))?;
        registry.register(Box::new(gossip_messages.clone()))?;
        registry.register(Box::new(peer_violations.clone()))?;
        for kind in ["malformed_frame", "rate_limit", "bad_announcement"] {
            peer_violations.with_label_values(&[kind]);
        }
        registry.register(Box::new(changes_applied.clone()))?;
        registry.register(Box::new(chunks_applied.clone()))?;
        registry.register(Box::new(changes_rejected.clone()))?;
        registry.register(Box::new(peers_connected.clone()))?;
        registry.register(Box::new(sync_frames.clone()))?;
        registry.register(Box::new(sync_bytes.clone()))?;
        for reason in [
            "bad_signature",
            "unauthorized",
            "malformed",
            "expired",
            "overflow",
            "changes_in_sync_message",
            "unknown_document",
        ] {
            changes_rejected.with_label_values(&[reason]);
        }
        registry.register(Box::new(api_requests.clone()))?;
        registry.register(Box::new(api_duration.clone()))?;
        registry.register(Box::new(store_commits.clone()))?;
        registry.register(Box::new(store_commit_duration.clone()))?;
        registry.register(Box::new(workspaces.clone()))?;
        registry.register(Box::new(store_size.clone()))?;
        registry.register(Box::new(documents.clone()))?;
        let relay_reservations = IntGauge::new(
            "relay_reservations",
            "reservations this node's relay holds for members",
        )?;
        let relay_circuits =
            IntGauge::new("relay_circuits", "circuits open through this node's relay")?;
        let relay_requests = IntCounterVec::new(
            Opts::new(
                "relay_requests_total",
                "requests to this node's relay, by kind (reservation, circuit) and outcome",
            ),
            &["kind", "outcome"],
        )?;
        let relayed_bytes = IntCounterVec::new(
            Opts::new(
                "relayed_sync_bytes_total",
                "sync frame bytes this node sent or received over relayed connections",
            ),
            &["direction"],
        )?;
        let relay_carried = IntCounter::new(
            "relay_carried_bytes_total",
            "bytes this node's relay carried through members' circuits, both ways",
        )?;
        let relay_paced = IntCounter::new(
            "relay_paced_total",
            "reads of a circuit that waited for the relay's bytes-per-second limit",
        )?;
        let peer_lookups = IntCounterVec::new(
            Opts::new(
                "peer_lookups_total",
                "Kademlia lookups of a member no known address reached, by outcome (found, not_found)",
            ),
            &["outcome"],
        )?;
        for outcome in ["found", "not_found"] {
            peer_lookups.with_label_values(&[outcome]);
        }
        let hole_punches = IntCounterVec::new(
            Opts::new(
                "hole_punches_total",
                "attempts to upgrade a relayed connection to a direct one (DCUtR), by outcome",
            ),
            &["outcome"],
        )?;
        for kind in ["reservation", "circuit"] {
            for outcome in ["accepted", "denied"] {
                relay_requests.with_label_values(&[kind, outcome]);
            }
        }
        for direction in ["in", "out"] {
            relayed_bytes.with_label_values(&[direction]);
        }
        for outcome in ["success", "failure"] {
            hole_punches.with_label_values(&[outcome]);
        }
        registry.register(Box::new(relay_reservations.clone()))?;
        registry.register(Box::new(relay_circuits.clone()))?;
        registry.register(Box::new(relay_requests.clone()))?;
        registry.register(Box::new(relayed_bytes.clone()))?;
        registry.register(Box::new(relay_carried.clone()))?;
        registry.register(Box::new(relay_paced.clone()))?;
        registry.register(Box::new(peer_lookups.clone()))?;
        registry.register(Box::new(hole_punches.clone()))?;
        Ok(Self {
            registry,
            api_requests,
            api_duration,
            store_commits,
            store_commit_duration,
            workspaces,
            store_size,
            documents,
            changes_applied,
            chunks_applied,
            changes_rejected,
            sessions_refused,
            peers_connected,
            sync_frames,
            sync_bytes,
            gossip_messages,
            peer_violations,
            analysis_duration,
            ai_cache,
            propagation,
            ollama_duration,
            audit_entries,
            event_subscribers,
            relay_reservations,
            relay_circuits,
            relay_requests,
            relayed_bytes,
            relay_carried,
            relay_paced,
            peer_lookups,
            hole_punches,
        })
    }

    /// Records one API request.
    pub fn api_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.api_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.api_duration
            .with_label_values(&[route, method])
            .observe(seconds);
    }

    /// Records one store commit.
    pub fn store_commit(&self, seconds: f64, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.store_commits.with_label_values(&[outcome]).inc();
        self.store_commit_duration
            .with_label_values(&[outcome])
            .observe(seconds);
    }

    /// Records the store's size figures.
    pub fn store_state(&self, workspaces: usize, file_size: u64) {
        self.workspaces
            .set(i64::try_from(workspaces).unwrap_or(i64::MAX));
        self.store_size
            .set(i64::try_from(file_size).unwrap_or(i64::MAX));
    }

    /// Records how many file documents are loaded and how many parked.
    pub fn documents(&self, loaded: usize, parked: usize) {
        for (state, n) in [("loaded", loaded), ("parked", parked)] {
            self.documents
                .with_label_values(&[state])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn changes_applied(&self, n: u64) {
        self.changes_applied.inc_by(n);
    }

    /// A document replaced whole by a peer's checked chunk.
    pub fn chunk_applied(&self) {
        self.chunks_applied.inc();
    }

    /// A sync session refused, labelled by [`xencode_protocol::sync::SessionRefusal::label`].
    pub fn session_refused(&self, reason: &str) {
        self.sessions_refused.with_label_values(&[reason]).inc();
    }

    pub fn changes_rejected(&self, reason: &str, n: u64) {
        self.changes_rejected.with_label_values(&[reason]).inc_by(n);
    }

    pub fn peers_connected(&self, n: usize) {
        self.peers_connected
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts one sync frame of `bytes` in `direction` ("in" or "out").
    pub fn sync_frame(&self, direction: &str, bytes: usize) {
        self.sync_frames.with_label_values(&[direction]).inc();
        self.sync_bytes
            .with_label_values(&[direction])
            .inc_by(bytes as u64);
    }

    /// Reservations and circuits this node's relay holds now.
    pub fn relay_state(&self, reservations: usize, circuits: usize) {
        self.relay_reservations
            .set(i64::try_from(reservations).unwrap_or(i64::MAX));
        self.relay_circuits
            .set(i64::try_from(circuits).unwrap_or(i64::MAX));
    }

    /// A request to this node's relay: `kind` "reservation" or "circuit",
    /// `outcome` "accepted" or "denied".
    pub fn relay_request(&self, kind: &str, outcome: &str) {
        self.relay_requests
            .with_label_values(&[kind, outcome])
            .inc();
    }

    /// Bytes this node's relay read from one end of a circuit (it writes
    /// them to the other).
    pub fn relay_bytes(&self, bytes: u64) {
        self.relay_carried.inc_by(bytes);
    }

    /// A lookup of a member by peer id ended: "found" or "not_found".
    pub fn peer_lookup(&self, outcome: &str) {
        self.peer_lookups.with_label_values(&[outcome]).inc();
    }

    /// A circuit's read waited for the relay's bytes-per-second limit.
    pub fn relay_paced(&self) {
        self.relay_paced.inc();
    }

    /// Sync bytes that went over a relayed connection, "in" or "out".
    pub fn relayed(&self, direction: &str, bytes: usize) {
        self.relayed_bytes
            .with_label_values(&[direction])
            .inc_by(bytes as u64);
    }

    /// One hole-punch attempt's outcome: "success" or "failure".
    pub fn hole_punch(&self, outcome: &str) {
        self.hole_punches.with_label_values(&[outcome]).inc();
    }

    /// Counts one gossip announcement ("in"/"out") and what became of it.
    pub fn gossip(&self, direction: &str, outcome: &str) {
        self.gossip_messages
            .with_label_values(&[direction, outcome])
            .inc();
    }

    /// Records how long one analysis took.
    pub fn analysis(&self, kind: &str, seconds: f64) {
        self.analysis_duration
            .with_label_values(&[kind])
            .observe(seconds);
    }

    /// Counts one AI cache lookup ("hit" or "miss").
    pub fn ai_cache(&self, result: &str) {
        self.ai_cache.with_label_values(&[result]).inc();
    }

    /// Records the propagation latency of one applied batch of changes.
    pub fn propagation(&self, seconds: f64) {
        self.propagation.observe(seconds.max(0.0));
    }

    /// Records one request to Ollama and its outcome.
    pub fn ollama(&self, operation: &str, status: &str, seconds: f64) {
        self.ollama_duration
            .with_label_values(&[operation, status])
            .observe(seconds);
    }

    /// Counts audit entries appended.
    pub fn audit_entry(&self, allow: bool) {
        let decision = if allow { "allow" } else { "deny" };
        self.audit_entries.with_label_values(&[decision]).inc();
    }

    /// Tracks how many clients follow the event stream.
    pub fn event_subscribers(&self, delta: i64) {
        self.event_subscribers.add(delta);
    }

    /// Counts one protocol violation by a peer.
    pub fn peer_violation(&self, kind: &str) {
        self.peer_violations.with_label_values(&[kind]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod dashboard_tests {
    /// Every metric the Grafana dashboard queries is one the node exports,
    /// and the file is an importable dashboard (JSON with a data source
    /// input and panels with queries).
    #[test]
    fn the_grafana_dashboard_queries_real_metrics() {
        let text = include_str!("../../docs/grafana-dashboard.json");
        let dash: serde_json::Value = serde_json::from_str(text).expect("valid JSON");
        assert_eq!(dash["__inputs"][0]["pluginId"], "prometheus");
        let panels = dash["panels"].as_array().expect("panels");
        assert!(panels.len() >= 10);
        let source = include_str!("metrics.rs");
        let mut checked = 0;
        for panel in panels {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    let Some(name) = word.strip_prefix("xencode_") else {
                        continue;
                    };
                    let base = ["_bucket", "_count", "_sum"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(name);
                    assert!(
                        source.contains(&format!("\"{base}\"")),
                        "the dashboard queries xencode_{base}, which the node does not export"
                    );
                    checked += 1;
                }
            }
        }
        assert!(checked >= 15, "{checked}");
    }
}
