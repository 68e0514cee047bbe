//! The server's shared state: the store, the cache over it, and settings.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use evnet_store::Store;

use crate::cache::Cache;
use crate::desired::DesiredTracker;
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Share of each NIC kept free of guarantees, in percent.
    pub headroom_percent: u64,
    /// A host whose agent has not sent a heartbeat for this long is `lost`.
    pub host_lost_after_ms: u64,
    /// Requests a second each tenant and each host may send (0: no limit).
    pub rate_limit_rps: u32,
    /// Requests a caller may send at once above that rate.
    pub rate_limit_burst: u32,
    /// When set, `/metrics` needs this bearer token.
    pub metrics_token: Option<Secret>,
    /// Where the audit log is appended (none: no audit log).
    pub audit_log: Option<PathBuf>,
}

/// Default rate limit: requests a second per tenant or host.
pub const DEFAULT_RATE_LIMIT_RPS: u32 = 200;
/// Default burst above it.
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 2_000;

impl Default for Settings {
    fn default() -> Self {
        Self {
            headroom_percent: evnet_model::placement::DEFAULT_HEADROOM_PERCENT,
            host_lost_after_ms: 15_000,
            rate_limit_rps: DEFAULT_RATE_LIMIT_RPS,
            rate_limit_burst: DEFAULT_RATE_LIMIT_BURST,
            metrics_token: None,
            audit_log: None,
        }
    }
}

/// A secret that `Debug` does not print.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Clone)]
pub struct AppState {
    /// This server among the servers on the store, and the loops it leads.
    pub cluster: Arc<crate::cluster::Cluster>,
    pub store: Arc<dyn Store>,
    pub cache: Arc<Cache>,
    pub admin_token_sha: Arc<str>,
    /// Seals and opens EC2 access-key secrets ([`crate::ec2::credentials`]).
    pub access_key_sealing: Arc<[u8; 32]>,
    pub settings: Arc<Settings>,
    /// Addresses handed to in-flight creates, per subnet (ENIs, NAT
    /// gateways) or external network (elastic IPs), so concurrent creates
    /// on this server try different addresses. The store's compare on the
    /// address key is what guarantees uniqueness.
    pub ip_reservations: Arc<Mutex<HashMap<String, HashSet<Ipv4Addr>>>>,
    /// Quota slots handed to in-flight creates, per (tenant, quota); see
    /// [`crate::quota`].
    pub slot_reservations: Arc<Mutex<HashMap<(String, String), HashSet<u32>>>>,
    pub desired: Arc<DesiredTracker>,
    pub metrics: Arc<Metrics>,
    /// Agents' latest bandwidth reports and the controller's caps.
    pub bandwidth: Arc<crate::bandwidth::Board>,
    /// Per-caller request rate limits.
    pub limiter: Arc<crate::ratelimit::Limiter>,
    /// SHA-256 of the metrics token, when `/metrics` needs one.
    pub metrics_token_sha: Option<Arc<str>>,
    pub audit: Option<Arc<crate::audit::AuditLog>>,
}
