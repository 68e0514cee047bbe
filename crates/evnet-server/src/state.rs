//! The server's shared state: the store, the cache over it, and settings.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
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
}

impl Default for Settings {
    fn default() -> Self {
        Self { headroom_percent: evnet_model::placement::DEFAULT_HEADROOM_PERCENT, host_lost_after_ms: 15_000 }
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
    /// Addresses handed to in-flight ENI creates, per subnet, so concurrent
    /// creates on this server try different addresses. The store's compare
    /// on the address key is what guarantees uniqueness.
    pub ip_reservations: Arc<Mutex<HashMap<String, HashSet<Ipv4Addr>>>>,
    pub desired: Arc<DesiredTracker>,
    pub metrics: Arc<Metrics>,
    /// Agents' latest bandwidth reports and the controller's caps.
    pub bandwidth: Arc<crate::bandwidth::Board>,
}
