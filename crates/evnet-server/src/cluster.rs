//! Several servers on one store: which servers there are, and which one
//! runs each loop that must run once.
//!
//! On etcd every server holds one lease (TTL [`Cluster::ttl`], default
//! 3 s) that it renews every third of the TTL. Bound to it are its
//! registration `/cluster/servers/{id}` (id, URL, start time) and the
//! leadership key `/cluster/leaders/{loop}` of every loop it leads. A
//! server campaigns for each loop of [`LOOPS`] every period with a
//! create-if-absent on the leader key; when a leader dies its lease
//! expires, etcd deletes its keys, and the next campaign of another server
//! wins: leadership moves within the TTL plus one period. A leader that
//! cannot renew its lease for two thirds of the TTL stops leading on its
//! own, before etcd could hand the loop to someone else. The loops' writes
//! compare revisions anyway, so even a short overlap writes nothing wrong.
//!
//! With the embedded store there is one server, and it leads every loop.
//!
//! The cache follows the `/cluster/` keys like every other key, so
//! `GET /v1/cluster` answers from it; each other server's lag comes from
//! asking it (`GET /v1/cluster/self`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use evnet_store::EtcdStore;
use serde::{Deserialize, Serialize};

/// The loops that must run on one server at a time.
pub const LOOPS: [&str; 3] = [BANDWIDTH, HOST_LIVENESS, NAT_FAILOVER];
pub const BANDWIDTH: &str = "bandwidth";
pub const HOST_LIVENESS: &str = "host-liveness";
/// Moves NAT gateways off lost hosts ([`crate::natgw_failover`]).
pub const NAT_FAILOVER: &str = "nat-failover";

pub const SERVERS_PREFIX: &str = "/cluster/servers/";
pub const LEADERS_PREFIX: &str = "/cluster/leaders/";

/// The default lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3);

/// What a server registers about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ServerRecord {
    pub id: String,
    /// Where the server's API answers (its advertised URL).
    pub url: String,
    /// RFC 3339.
    pub started_at: String,
}

enum Backend {
    Solo,
    Etcd(EtcdStore),
}

#[derive(Default)]
struct Leading {
    loops: BTreeSet<String>,
    /// When the lease was last renewed (or granted).
    renewed: Option<Instant>,
    lease: Option<i64>,
}

/// This server's place among the servers on the store.
pub struct Cluster {
    pub me: ServerRecord,
    /// For talking to the other servers (status, forwarded reports).
    pub http: reqwest::Client,
    backend: Backend,
    pub ttl: Duration,
    state: Mutex<Leading>,
}

impl Cluster {
    /// One server alone on its store: it leads everything.
    pub fn solo(url: &str) -> Self {
        Cluster { me: record(url), http: peer_client(), backend: Backend::Solo, ttl: DEFAULT_TTL, state: Default::default() }
    }

    /// A server among others on etcd; [`Cluster::run`] campaigns.
    pub fn etcd(store: EtcdStore, url: &str, ttl: Duration) -> Self {
        let ttl = ttl.max(Duration::from_secs(1));
        Cluster { me: record(url), http: peer_client(), backend: Backend::Etcd(store), ttl, state: Default::default() }
    }

    /// The store's kind and endpoints.
    pub fn store_kind(&self) -> (&'static str, Vec<String>) {
        match &self.backend {
            Backend::Solo => ("embedded", Vec::new()),
            Backend::Etcd(s) => ("etcd", s.options().endpoints.clone()),
        }
    }

    pub fn etcd_store(&self) -> Option<&EtcdStore> {
        match &self.backend {
            Backend::Etcd(s) => Some(s),
            Backend::Solo => None,
        }
    }

    /// How often leases are renewed and leadership campaigned for.
    pub fn period(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(200))
    }

    /// Whether this server runs `name` now.
    pub fn leads(&self, name: &str) -> bool {
        match self.backend {
            Backend::Solo => true,
            Backend::Etcd(_) => {
                let g = self.state.lock().unwrap_or_else(|e| e.into_inner());
                g.loops.contains(name) && g.renewed.is_some_and(|t| t.elapsed() < self.ttl * 2 / 3)
            }
        }
    }

    /// The loops this server leads now.
    pub fn leading(&self) -> Vec<String> {
        LOOPS.iter().filter(|l| self.leads(l)).map(|l| l.to_string()).collect()
    }

    /// Registers this server and campaigns for the loops, forever (etcd);
    /// returns at once with the embedded store.
    pub async fn run(self: std::sync::Arc<Self>) {
        let Backend::Etcd(store) = &self.backend else { return };
        let period = self.period();
        let me = serde_json::to_vec(&self.me).expect("a server record serializes");
        loop {
            let lease = match store.lease(self.ttl).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot get a lease from etcd; retrying");
                    tokio::time::sleep(period).await;
                    continue;
                }
            };
            {
                let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
                g.lease = Some(lease);
                g.renewed = Some(Instant::now());
                g.loops.clear();
            }
            if let Err(e) = store.put_leased(&format!("{SERVERS_PREFIX}{}", self.me.id), me.clone(), lease).await {
                tracing::warn!(error = %e, "cannot register in etcd; retrying");
                tokio::time::sleep(period).await;
                continue;
            }
            loop {
                for name in LOOPS {
                    if self.state.lock().unwrap_or_else(|e| e.into_inner()).loops.contains(name) {
                        continue;
                    }
                    let key = format!("{LEADERS_PREFIX}{name}");
                    match store.create_leased(&key, self.me.id.as_bytes().to_vec(), lease).await {
                        Ok((won, holder)) if won || holder.as_deref() == Some(self.me.id.as_bytes()) => {
                            tracing::info!(server = %self.me.id, loop_name = name, "leading");
                            self.state.lock().unwrap_or_else(|e| e.into_inner()).loops.insert(name.to_string());
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(error = %e, loop_name = name, "campaign failed"),
                    }
                }
                tokio::time::sleep(period).await;
                match store.keep_alive(lease).await {
                    Ok(true) => {
                        self.state.lock().unwrap_or_else(|e| e.into_inner()).renewed = Some(Instant::now());
                    }
                    Ok(false) => {
                        tracing::warn!(server = %self.me.id, "lease expired; stepping down and registering again");
                        break;
                    }
                    Err(e) => {
                        let renewed = self.state.lock().unwrap_or_else(|e| e.into_inner()).renewed;
                        tracing::warn!(error = %e, "cannot renew the lease");
                        if renewed.is_none_or(|t| t.elapsed() >= self.ttl) {
                            break;
                        }
                    }
                }
            }
            self.state.lock().unwrap_or_else(|e| e.into_inner()).loops.clear();
        }
    }

    /// Gives up leadership and registration at once (a clean shutdown), so
    /// the loops move without waiting for the TTL.
    pub async fn resign(&self) {
        let lease = {
            let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
            g.loops.clear();
            g.lease.take()
        };
        if let (Backend::Etcd(store), Some(lease)) = (&self.backend, lease)
            && let Err(e) = store.revoke(lease).await
        {
            tracing::warn!(error = %e, "could not revoke the lease; leadership moves when it expires");
        }
    }
}

/// How long one call to another server may take.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(1);

fn peer_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(PEER_TIMEOUT).build().unwrap_or_default()
}

/// The URL of the server leading `name`, if another server leads it.
pub fn leader_url(keys: &BTreeMap<String, Vec<u8>>, name: &str, me: &str) -> Option<String> {
    let leader = String::from_utf8_lossy(keys.get(&format!("{LEADERS_PREFIX}{name}"))?).into_owned();
    if leader == me {
        return None;
    }
    let record: ServerRecord = serde_json::from_slice(keys.get(&format!("{SERVERS_PREFIX}{leader}"))?).ok()?;
    Some(record.url)
}

fn record(url: &str) -> ServerRecord {
    ServerRecord {
        id: format!("srv-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff),
        url: url.to_string(),
        started_at: crate::common::now_rfc3339(),
    }
}

/// The servers and leaders the cache has seen under `/cluster/`.
pub fn from_keys(keys: &BTreeMap<String, Vec<u8>>) -> (Vec<ServerRecord>, BTreeMap<String, String>) {
    let mut servers = Vec::new();
    let mut leaders = BTreeMap::new();
    for (k, v) in keys {
        if k.starts_with(SERVERS_PREFIX) {
            if let Ok(r) = serde_json::from_slice::<ServerRecord>(v) {
                servers.push(r);
            }
        } else if let Some(name) = k.strip_prefix(LEADERS_PREFIX) {
            leaders.insert(name.to_string(), String::from_utf8_lossy(v).into_owned());
        }
    }
    (servers, leaders)
}
