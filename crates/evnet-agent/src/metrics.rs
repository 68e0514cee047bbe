//! The agent's Prometheus metrics (`--metrics-listen`).

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub struct AgentMetrics {
    registry: Mutex<Registry>,
    pub reconciles_ok: Counter,
    pub reconciles_failed: Counter,
    pub reconciles_not_converged: Counter,
    pub ops_applied: Counter,
    pub applied_generation: Gauge,
    pub reconcile_seconds: Histogram,
    /// Objects whose ops failed in the last pass, by kind (`vpc`,
    /// `instance`, `host`): `evnet_agent_reconcile_failures{kind="vpc"}`.
    pub reconcile_failures: Family<KindLabel, Gauge>,
    /// DHCP answers sent, by kind (`offer`, `ack`, `nak`).
    pub dhcp_replies: Family<KindLabel, Counter>,
    /// DHCP frames not answered, by reason (`crate::dhcp::Ignored`).
    pub dhcp_ignored: Family<ReasonLabel, Counter>,
    /// ENI devices the DHCP thread holds a socket on.
    pub dhcp_sockets: Gauge,
    /// Instance metadata requests answered, by status
    /// (`crate::metadata::STATUSES`).
    pub metadata_requests: Family<CodeLabel, Counter>,
    /// ENI devices the metadata thread listens on.
    pub metadata_sockets: Gauge,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: &'static str,
}

impl CodeLabel {
    /// The label of an HTTP status the metadata service gives.
    pub fn of(status: u16) -> CodeLabel {
        let code = match status {
            200 => "200",
            400 => "400",
            401 => "401",
            403 => "403",
            404 => "404",
            405 => "405",
            _ => "500",
        };
        CodeLabel { code }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("evnet_agent");
        let m = Self {
            registry: Mutex::new(Registry::default()),
            reconciles_ok: Counter::default(),
            reconciles_failed: Counter::default(),
            reconciles_not_converged: Counter::default(),
            ops_applied: Counter::default(),
            applied_generation: Gauge::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            reconcile_failures: Family::default(),
            dhcp_replies: Family::default(),
            dhcp_ignored: Family::default(),
            dhcp_sockets: Gauge::default(),
            metadata_requests: Family::default(),
            metadata_sockets: Gauge::default(),
        };
        registry.register("reconciles_ok", "Reconcile passes that converged", m.reconciles_ok.clone());
        registry.register("reconciles_failed", "Reconcile passes that failed", m.reconciles_failed.clone());
        registry.register("reconciles_not_converged", "Passes right after an apply that still found work", m.reconciles_not_converged.clone());
        registry.register("ops_applied", "Kernel ops applied", m.ops_applied.clone());
        registry.register("applied_generation", "The desired-state generation last applied", m.applied_generation.clone());
        registry.register("reconcile_seconds", "Time of one reconcile pass", m.reconcile_seconds.clone());
        registry.register("reconcile_failures", "Objects whose ops failed in the last pass, by kind", m.reconcile_failures.clone());
        registry.register("dhcp_replies", "DHCP answers sent, by kind", m.dhcp_replies.clone());
        registry.register("dhcp_ignored", "DHCP frames not answered, by reason", m.dhcp_ignored.clone());
        registry.register("dhcp_sockets", "ENI devices the DHCP thread listens on", m.dhcp_sockets.clone());
        registry.register("metadata_requests", "Instance metadata requests answered, by status", m.metadata_requests.clone());
        registry.register("metadata_sockets", "ENI devices the metadata thread listens on", m.metadata_sockets.clone());
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
        m
    }
}

impl AgentMetrics {
    /// Sets the failure gauges from one pass's failures (every kind is
    /// written, so a kind that recovered goes back to 0).
    pub fn set_failures(&self, failures: &[evnet_model::ReconcileFailure]) {
        use evnet_model::FailedObjectKind as K;
        for kind in [K::Vpc, K::Instance, K::Host] {
            let n = failures.iter().filter(|f| f.kind == kind).count();
            self.reconcile_failures.get_or_create(&KindLabel { kind: kind.as_str() }).set(n as i64);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        prometheus_client::encoding::text::encode(&mut out, &reg).expect("writing to a String cannot fail");
        out
    }
}
