//! `GET /api/v1/events`: what the node commits and meets, as Server-Sent
//! Events, filtered to the workspaces this node is a member of.

use std::convert::Infallible;

use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::RecvError;
use xencode_protocol::WorkspaceId;
use xencode_protocol::api::NodeEvent;

use super::extract::parse_ws;
use super::extract::query_pairs;
use super::{ApiError, ApiState};
use crate::store::Store;

/// Streams events; `?workspace=ID` keeps only that workspace's (and the
/// node-wide peer and lag events).
pub async fn events(
    State(state): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let store = state.store()?.clone();
    let only = workspace_filter(query.as_deref())?;
    let rx = store.subscribe();
    let gauge = Subscriber::new(state.inner.metrics.clone());
    let stopping = state.inner.stopping.subscribe();
    let stream = futures::stream::unfold(
        (rx, store, gauge, stopping),
        move |(mut rx, store, gauge, mut stopping)| async move {
            loop {
                let received = tokio::select! {
                    r = rx.recv() => r,
                    // The node is stopping: the stream ends.
                    _ = stopping.wait_for(|s| *s) => return None,
                };
                let event = match received {
                    Ok(event) => event,
                    Err(RecvError::Lagged(missed)) => NodeEvent::Lagged { missed },
                    Err(RecvError::Closed) => return None,
                };
                if visible(&store, only, &event) {
                    return Some((
                        Ok::<_, Infallible>(to_sse(&event)),
                        (rx, store, gauge, stopping),
                    ));
                }
            }
        },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Counts a subscriber in the metrics for as long as its stream lives.
struct Subscriber(std::sync::Arc<crate::metrics::Metrics>);

impl Subscriber {
    fn new(metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        metrics.event_subscribers(1);
        Self(metrics)
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.0.event_subscribers(-1);
    }
}

fn workspace_filter(query: Option<&str>) -> Result<Option<WorkspaceId>, ApiError> {
    let mut only = None;
    for (_, id) in query_pairs(query, &["workspace"])? {
        only = Some(parse_ws(id)?);
    }
    Ok(only)
}

/// Whether this node's user may see the event: workspace events only while
/// this node is a member of the workspace (a workspace just created or joined
/// is announced before its access document arrives), except the ones that
/// tell it its standing changed — added, removed, and the access change that
/// revoked it (its open pages must say so without a reload).
fn visible(store: &Store, only: Option<WorkspaceId>, event: &NodeEvent) -> bool {
    let Some(ws) = event.workspace() else {
        return true;
    };
    if only.is_some_and(|o| o != ws) {
        return false;
    }
    matches!(
        event,
        NodeEvent::WorkspaceAdded { .. }
            | NodeEvent::WorkspaceRemoved { .. }
            | NodeEvent::AccessChanged { .. }
    ) || store.stats().role(&ws).is_some()
}

fn to_sse(event: &NodeEvent) -> Event {
    let sse = Event::default().event(event.name());
    match sse.json_data(event) {
        Ok(e) => e,
        // Serializing these plain enums cannot fail; say so if it ever does.
        Err(_) => Event::default().event("error").data("{}"),
    }
}
