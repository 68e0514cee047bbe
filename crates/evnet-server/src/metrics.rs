//! Prometheus metrics for the server, served as text on `/metrics` (behind
//! a bearer token when `--metrics-token` is set). Request labels come only
//! from fixed sets: the method one of HTTP's own or `other`, the route the
//! matched route template or `unmatched`, the status code the server
//! answered; so no request can add series of its own.

use std::sync::Mutex;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::state::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub store_writes: Counter,
    pub store_conflicts: Counter,
    pub store_revision: Gauge,
    pub rate_limited: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("evnet_server");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 2.0, 18)));
        let store_writes = Counter::default();
        let store_conflicts = Counter::default();
        let store_revision = Gauge::default();
        let rate_limited = Counter::default();
        registry.register("rate_limited", "Requests refused with 429 by the per-caller rate limit", rate_limited.clone());
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register("http_request_duration_seconds", "Time to answer a request", latency.clone());
        registry.register("store_writes", "Store transactions that committed", store_writes.clone());
        registry.register("store_conflicts", "Store transactions whose compares failed and were retried", store_conflicts.clone());
        registry.register("store_revision", "The revision the server's cache has reached", store_revision.clone());
        Self { registry: Mutex::new(registry), requests, latency, store_writes, store_conflicts, store_revision, rate_limited }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("writing to a String cannot fail");
        out
    }
}

/// The method's label: its name for HTTP's own methods, else `other`.
pub fn method_label(m: &axum::http::Method) -> &str {
    if crate::frontdoor::is_standard(m) { m.as_str() } else { "other" }
}

pub async fn serve_metrics(State(st): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Some(sha) = &st.metrics_token_sha {
        let given = headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|h| h.strip_prefix("Bearer "));
        if !given.is_some_and(|t| crate::auth::sha256_hex(t.trim()) == **sha) {
            return crate::error::ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "unauthorized",
                "/metrics needs the metrics token: send `Authorization: Bearer TOKEN` (the server's --metrics-token)",
            )
            .into_response();
        }
    }
    st.metrics.store_revision.set(st.cache.revision() as i64);
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], st.metrics.render())
        .into_response()
}
