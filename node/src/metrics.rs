//! The node's Prometheus registry (`prometheus` crate; one registry per node,
//! never the global default, so tests can run several nodes in one process).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
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
        registry.register(Box::new(api_requests.clone()))?;
        registry.register(Box::new(api_duration.clone()))?;
        registry.register(Box::new(store_commits.clone()))?;
        registry.register(Box::new(store_commit_duration.clone()))?;
        registry.register(Box::new(workspaces.clone()))?;
        registry.register(Box::new(store_size.clone()))?;
        Ok(Self {
            registry,
            api_requests,
            api_duration,
            store_commits,
            store_commit_duration,
            workspaces,
            store_size,
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

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}
