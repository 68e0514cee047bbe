//! A typed, indexed view of the store, kept current by a watch (an informer).
//!
//! Handlers read from it and never from the store directly; after a write at
//! revision R a handler waits for the cache to reach R, so a client always
//! reads its own writes. The cache lists, then watches from the listed
//! revision, and lists again when the watch reports a gap.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use evnet_model::ipam::IpPool;
use evnet_model::*;
use evnet_store::{EventKind, KeyValue, Revision, Store, StoreError, WatchEvent};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::fanout::{FanoutIndex, Obj};
use crate::keys;

/// What a token may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum TokenRecord {
    Tenant { tenant_id: String },
    /// Single use: registering a host deletes it.
    Bootstrap { expires_at_ms: u64 },
    /// A host's credential.
    Host { host_id: String },
    /// The shared agent tokens of earlier versions, refused.
    Agent,
}

/// An EC2 access key: its tenant and its secret, sealed
/// ([`crate::ec2::credentials`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKeyRecord {
    pub tenant_id: String,
    pub created_at: String,
    pub sealed_secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdemRecord {
    pub id: String,
    pub request_sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HostLedger {
    pub guaranteed_mbps: u64,
}

/// A value with the store revisions it was read at.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    pub value: Arc<T>,
    pub mod_revision: Revision,
}

#[derive(Default)]
pub struct Snapshot {
    pub revision: Revision,
    pub tenants: BTreeMap<String, Entry<Tenant>>,
    pub hosts: BTreeMap<String, Entry<Host>>,
    pub vpcs: BTreeMap<String, Entry<Vpc>>,
    pub subnets: BTreeMap<String, Entry<Subnet>>,
    pub instances: BTreeMap<String, Entry<Instance>>,
    pub enis: BTreeMap<String, Entry<Eni>>,
    pub security_groups: BTreeMap<String, Entry<SecurityGroup>>,
    pub route_tables: BTreeMap<String, Entry<RouteTable>>,
    pub peerings: BTreeMap<String, Entry<Peering>>,
    pub bandwidth_pools: BTreeMap<String, Entry<BandwidthPool>>,
    pub external_networks: BTreeMap<String, Entry<ExternalNetwork>>,
    pub internet_gateways: BTreeMap<String, Entry<InternetGateway>>,
    pub elastic_ips: BTreeMap<String, Entry<ElasticIp>>,
    pub nat_gateways: BTreeMap<String, Entry<NatGateway>>,
    /// Subnet id → the addresses in use (from `/ipam/` keys).
    pub ipam: HashMap<String, IpPool>,
    /// External network id → its allocation pool with the addresses held
    /// (from `/eip/` keys).
    pub eip_pools: HashMap<String, IpPool>,
    /// Elastic address → the elastic IP id holding it (the `/eip/` keys).
    pub eip_keys: BTreeMap<Ipv4Addr, String>,
    pub vnis: BTreeMap<u32, String>,
    pub hostnames: HashMap<String, (String, Revision)>,
    pub ledgers: HashMap<String, (HostLedger, Revision)>,
    /// Token SHA-256 → what it may do, and its key's revision.
    pub tokens: HashMap<String, (TokenRecord, Revision)>,
    /// Tenant id → the quotas the admin set (defaults elsewhere).
    pub quotas: HashMap<String, Quotas>,
    /// (tenant, quota) → slot number → the resource holding it: one key
    /// per counted resource, created with "must not exist", so a quota
    /// holds under concurrent creates without one key they all rewrite.
    pub quota_slots: HashMap<(String, String), BTreeMap<u32, String>>,
    /// Resource id → its slot key.
    pub slot_of: HashMap<String, String>,
    /// (tenant, kind) → how many of that kind the tenant has.
    pub tenant_counts: HashMap<(String, Option<Kind>), usize>,
    pub idem: HashMap<String, IdemRecord>,
    /// Access key id → its record (from `/accesskeys/` keys).
    pub access_keys: BTreeMap<String, AccessKeyRecord>,
    /// The `/cluster/` keys: server registrations and loop leaders.
    pub cluster: BTreeMap<String, Vec<u8>>,
    /// Which hosts' desired state each object feeds, and which hosts the
    /// events applied lately touched.
    pub fanout: FanoutIndex,
}

impl Snapshot {
    pub(crate) fn apply(&mut self, ev: &WatchEvent) {
        let kv = &ev.kv;
        let put = ev.kind == EventKind::Put;
        let key = kv.key.as_str();
        if let Some(rest) = key.strip_prefix(keys::RESOURCE_PREFIX) {
            let Some((collection, id)) = rest.split_once('/') else { return };
            let id = id.to_string();
            let obj_id = id.clone();
            let old = self.fanout_obj(collection, &obj_id);
            macro_rules! upd {
                ($map:expr, $ty:ty) => {{
                    if put {
                        if let Some(mut v) = decode::<$ty>(kv) {
                            v.revision = kv.mod_revision;
                            let tenant = v.tenant.clone();
                            if $map.insert(id, Entry { value: Arc::new(v), mod_revision: kv.mod_revision }).is_none() {
                                *self.tenant_counts.entry((tenant, kind_of(collection))).or_default() += 1;
                            }
                        }
                    } else if let Some(old) = $map.remove(&id) {
                        let k = (old.value.tenant.clone(), kind_of(collection));
                        if let Some(n) = self.tenant_counts.get_mut(&k) {
                            *n = n.saturating_sub(1);
                        }
                    }
                }};
            }
            match collection {
                "tenants" => upd!(self.tenants, Tenant),
                "hosts" => upd!(self.hosts, Host),
                "vpcs" => upd!(self.vpcs, Vpc),
                "subnets" => {
                    if put {
                        if let Some(mut v) = decode::<Subnet>(kv) {
                            v.revision = kv.mod_revision;
                            self.ipam.entry(id.clone()).or_insert_with(|| IpPool::new(v.cidr_block));
                            self.subnets.insert(id, Entry { value: Arc::new(v), mod_revision: kv.mod_revision });
                        }
                    } else {
                        self.subnets.remove(&id);
                        self.ipam.remove(&id);
                    }
                }
                "instances" => upd!(self.instances, Instance),
                "enis" => upd!(self.enis, Eni),
                "security-groups" => upd!(self.security_groups, SecurityGroup),
                "route-tables" => upd!(self.route_tables, RouteTable),
                "peerings" => upd!(self.peerings, Peering),
                "bandwidth-pools" => upd!(self.bandwidth_pools, BandwidthPool),
                "external-networks" => {
                    if put {
                        if let Some(mut v) = decode::<ExternalNetwork>(kv) {
                            v.revision = kv.mod_revision;
                            // The block and pool never change: a rewrite keeps the pool.
                            if !self.eip_pools.contains_key(&id) {
                                let mut pool = IpPool::with_range(v.cidr, v.allocation_pool.start, v.allocation_pool.end);
                                for (ip, _) in self.eip_keys.range(v.allocation_pool.start..=v.allocation_pool.end) {
                                    let _ = pool.allocate_specific(*ip);
                                }
                                self.eip_pools.insert(id.clone(), pool);
                            }
                            self.external_networks.insert(id, Entry { value: Arc::new(v), mod_revision: kv.mod_revision });
                        }
                    } else {
                        self.external_networks.remove(&id);
                        self.eip_pools.remove(&id);
                    }
                }
                "internet-gateways" => upd!(self.internet_gateways, InternetGateway),
                "elastic-ips" => upd!(self.elastic_ips, ElasticIp),
                "nat-gateways" => upd!(self.nat_gateways, NatGateway),
                _ => {}
            }
            let new = self.fanout_obj(collection, &obj_id);
            if old.is_some() || new.is_some() {
                self.fanout.change(old, new);
            }
        } else if let Some(rest) = key.strip_prefix("/ipam/") {
            let Some((subnet, ip)) = rest.split_once('/') else { return };
            let Ok(ip) = ip.parse::<Ipv4Addr>() else { return };
            let Some(pool) = self.ipam.get_mut(subnet) else { return };
            if put {
                let _ = pool.allocate_specific(ip);
            } else {
                pool.free(ip);
            }
        } else if let Some(ip) = key.strip_prefix(keys::EIP_PREFIX) {
            let Ok(ip) = ip.parse::<Ipv4Addr>() else { return };
            // Every pool holding the address marks it: the key takes it
            // everywhere.
            for pool in self.eip_pools.values_mut().filter(|p| p.contains(ip)) {
                if put {
                    let _ = pool.allocate_specific(ip);
                } else {
                    pool.free(ip);
                }
            }
            if put {
                self.eip_keys.insert(ip, String::from_utf8_lossy(&kv.value).into_owned());
            } else {
                self.eip_keys.remove(&ip);
            }
        } else if let Some(rest) = key.strip_prefix("/vni/") {
            if let Ok(v) = rest.parse::<u32>() {
                if put {
                    self.vnis.insert(v, String::from_utf8_lossy(&kv.value).into_owned());
                } else {
                    self.vnis.remove(&v);
                }
            }
        } else if let Some(name) = key.strip_prefix("/hostname/") {
            if put {
                self.hostnames.insert(name.to_string(), (String::from_utf8_lossy(&kv.value).into_owned(), kv.mod_revision));
            } else {
                self.hostnames.remove(name);
            }
        } else if let Some(host) = key.strip_prefix("/hostbw/") {
            if put {
                let l = decode::<HostLedger>(kv).unwrap_or_default();
                self.ledgers.insert(host.to_string(), (l, kv.mod_revision));
            } else {
                self.ledgers.remove(host);
            }
        } else if let Some(sha) = key.strip_prefix("/tokens/") {
            if put {
                if let Some(t) = decode::<TokenRecord>(kv) {
                    self.tokens.insert(sha.to_string(), (t, kv.mod_revision));
                }
            } else {
                self.tokens.remove(sha);
            }
        } else if let Some(akid) = key.strip_prefix(keys::ACCESS_KEY_PREFIX) {
            if put {
                if let Some(r) = decode::<AccessKeyRecord>(kv) {
                    self.access_keys.insert(akid.to_string(), r);
                }
            } else {
                self.access_keys.remove(akid);
            }
        } else if key.starts_with("/cluster/") {
            if put {
                self.cluster.insert(key.to_string(), kv.value.clone());
            } else {
                self.cluster.remove(key);
            }
        } else if let Some(tenant) = key.strip_prefix("/quota/") {
            if put {
                if let Some(q) = decode::<Quotas>(kv) {
                    self.quotas.insert(tenant.to_string(), q);
                }
            } else {
                self.quotas.remove(tenant);
            }
        } else if let Some(rest) = key.strip_prefix("/slot/") {
            let mut parts = rest.splitn(3, '/');
            let (Some(tenant), Some(quota), Some(n)) = (parts.next(), parts.next(), parts.next().and_then(|n| n.parse::<u32>().ok())) else {
                return;
            };
            let slots = self.quota_slots.entry((tenant.to_string(), quota.to_string())).or_default();
            if put {
                let id = String::from_utf8_lossy(&kv.value).into_owned();
                self.slot_of.insert(id.clone(), key.to_string());
                slots.insert(n, id);
            } else if let Some(id) = slots.remove(&n) {
                self.slot_of.remove(&id);
            }
        } else if key.starts_with("/idem/") {
            if put {
                if let Some(r) = decode::<IdemRecord>(kv) {
                    self.idem.insert(key.to_string(), r);
                }
            } else {
                self.idem.remove(key);
            }
        }
    }

    /// The object `collection/id` as the fan-out index sees it (`None` for
    /// collections no desired state reads).
    fn fanout_obj(&self, collection: &str, id: &str) -> Option<Obj> {
        Some(match collection {
            "hosts" => Obj::Host(self.hosts.get(id)?.value.clone()),
            "instances" => Obj::Instance(self.instances.get(id)?.value.clone()),
            "enis" => Obj::Eni(self.enis.get(id)?.value.clone()),
            "vpcs" => Obj::Vpc(self.vpcs.get(id)?.value.clone()),
            "subnets" => Obj::Subnet(self.subnets.get(id)?.value.clone()),
            "security-groups" => Obj::SecurityGroup(self.security_groups.get(id)?.value.clone()),
            "route-tables" => Obj::RouteTable(self.route_tables.get(id)?.value.clone()),
            "peerings" => Obj::Peering(self.peerings.get(id)?.value.clone()),
            "elastic-ips" => Obj::ElasticIp(self.elastic_ips.get(id)?.value.clone()),
            "internet-gateways" => Obj::InternetGateway(self.internet_gateways.get(id)?.value.clone()),
            "nat-gateways" => Obj::NatGateway(self.nat_gateways.get(id)?.value.clone()),
            _ => return None,
        })
    }

    /// Sum of the guarantees of the ENIs attached on `host_id`, and the
    /// revision of the host's ledger key (0: never written).
    pub fn host_guaranteed(&self, host_id: &str) -> (u64, Revision) {
        let sum = self
            .enis
            .values()
            .filter(|e| e.value.attachment.as_ref().is_some_and(|a| a.host_id == host_id))
            .map(|e| e.value.bandwidth.guaranteed_mbps)
            .sum();
        (sum, self.ledgers.get(host_id).map(|l| l.1).unwrap_or(0))
    }

    /// How many resources of `kind` tenant `tenant` has.
    pub fn tenant_count(&self, tenant: &str, kind: Kind) -> usize {
        self.tenant_counts.get(&(tenant.to_string(), Some(kind))).copied().unwrap_or(0)
    }

    pub fn instance_count(&self, host_id: &str) -> u32 {
        self.instances.values().filter(|i| i.value.host_id == host_id).count() as u32
    }

    pub fn enis_of_instance(&self, instance_id: &str) -> Vec<Arc<Eni>> {
        let mut v: Vec<Arc<Eni>> = self
            .enis
            .values()
            .filter(|e| e.value.attachment.as_ref().is_some_and(|a| a.instance_id == instance_id))
            .map(|e| e.value.clone())
            .collect();
        v.sort_by_key(|e| e.attachment.as_ref().map(|a| a.device_index));
        v
    }

    pub fn used_vnis(&self) -> BTreeSet<u32> {
        self.vnis.keys().copied().collect()
    }
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!(key = %kv.key, error = %e, "undecodable value in store; ignoring it");
            None
        }
    }
}

/// The shared cache: a snapshot behind a lock and a channel that announces
/// each revision it reaches.
pub struct Cache {
    inner: RwLock<Snapshot>,
    revision_tx: watch::Sender<Revision>,
    /// Per host: a channel that announces the revisions at which the
    /// host's desired state may have changed (what its long polls wait on).
    host_tx: std::sync::Mutex<HashMap<String, watch::Sender<Revision>>>,
    /// False while the watch is broken and a relist has not yet succeeded:
    /// the snapshot may then be behind the store by any amount.
    connected: AtomicBool,
}

impl Cache {
    /// Lists the store and starts following it.
    pub async fn start(store: Arc<dyn Store>) -> Result<Arc<Cache>, StoreError> {
        let (revision_tx, _) = watch::channel(0);
        let cache = Arc::new(Cache {
            inner: RwLock::new(Snapshot::default()),
            revision_tx,
            host_tx: Default::default(),
            connected: AtomicBool::new(false),
        });
        let rev = cache.relist(store.as_ref()).await?;
        let follower = cache.clone();
        tokio::spawn(async move { follower.follow(store, rev).await });
        Ok(cache)
    }

    async fn relist(&self, store: &dyn Store) -> Result<Revision, StoreError> {
        let resp = store.range("/").await?;
        let mut snap = Snapshot { revision: resp.revision, ..Default::default() };
        // Subnets first, so their address pools exist before `/ipam/` keys land.
        let (subnets, rest): (Vec<_>, Vec<_>) = resp.kvs.into_iter().partition(|kv| kv.key.starts_with("/r/subnets/"));
        for kv in subnets.into_iter().chain(rest) {
            snap.apply(&WatchEvent { kind: EventKind::Put, kv });
        }
        snap.fanout.listed(resp.revision);
        *self.inner.write().unwrap_or_else(|e| e.into_inner()) = snap;
        self.revision_tx.send_replace(resp.revision);
        self.wake(None, resp.revision);
        self.connected.store(true, Ordering::Release);
        Ok(resp.revision)
    }

    async fn follow(&self, store: Arc<dyn Store>, mut rev: Revision) {
        let mut backoff = std::time::Duration::from_millis(50);
        loop {
            let mut stream = match store.watch("/", rev + 1).await {
                Ok(s) => s,
                Err(e) => {
                    self.connected.store(false, Ordering::Release);
                    tracing::warn!(error = %e, "cache watch failed; listing again");
                    match self.relist(store.as_ref()).await {
                        Ok(r) => rev = r,
                        Err(e) => {
                            tracing::error!(error = %e, "cache relist failed");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                        }
                    }
                    continue;
                }
            };
            backoff = std::time::Duration::from_millis(50);
            // Following again from where it stopped: the watch replays the gap.
            self.connected.store(true, Ordering::Release);
            while let Some(item) = stream.recv().await {
                match item {
                    Ok(batch) => {
                        let touched = {
                            let mut snap = self.inner.write().unwrap_or_else(|e| e.into_inner());
                            for ev in &batch.events {
                                snap.apply(ev);
                            }
                            snap.revision = batch.revision;
                            snap.fanout.finish(batch.revision)
                        };
                        rev = batch.revision;
                        self.revision_tx.send_replace(rev);
                        self.wake(Some(touched), rev);
                    }
                    Err(e) => {
                        self.connected.store(false, Ordering::Release);
                        tracing::warn!(error = %e, "cache watch interrupted");
                        break;
                    }
                }
            }
            // The watch ended without an error only if the store closed.
            self.connected.store(false, Ordering::Release);
            match self.relist(store.as_ref()).await {
                Ok(r) => rev = r,
                Err(StoreError::Closed) => return,
                Err(e) => {
                    tracing::error!(error = %e, "cache relist failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                }
            }
        }
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Snapshot> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn revision(&self) -> Revision {
        *self.revision_tx.borrow()
    }

    /// Whether the cache is following the store (its watch is up). While it
    /// is not, the server answers 503 rather than possibly stale reads.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Waits until the cache has seen revision `rev`.
    pub async fn wait_for(&self, rev: Revision) {
        let mut rx = self.revision_tx.subscribe();
        let _ = rx.wait_for(|r| *r >= rev).await;
    }

    /// A receiver that changes whenever the cache advances.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.revision_tx.subscribe()
    }

    /// A receiver that changes when `host_id`'s desired state may have
    /// changed (see [`crate::fanout`]), and not for writes elsewhere.
    pub fn watch_host(&self, host_id: &str) -> watch::Receiver<Revision> {
        let mut g = self.host_tx.lock().unwrap_or_else(|e| e.into_inner());
        g.entry(host_id.to_string()).or_insert_with(|| watch::channel(self.revision()).0).subscribe()
    }

    /// Wakes the long polls of `hosts` (every host: `None`) at `rev`, and
    /// forgets channels nobody waits on.
    fn wake(&self, hosts: Option<Vec<String>>, rev: Revision) {
        let mut g = self.host_tx.lock().unwrap_or_else(|e| e.into_inner());
        match hosts {
            None => {
                g.retain(|_, tx| tx.receiver_count() > 0);
                for tx in g.values() {
                    tx.send_replace(rev);
                }
            }
            Some(hosts) => {
                for h in hosts {
                    if let Some(tx) = g.get(&h) {
                        if tx.receiver_count() == 0 {
                            g.remove(&h);
                        } else {
                            tx.send_replace(rev);
                        }
                    }
                }
            }
        }
    }
}

fn kind_of(collection: &str) -> Option<Kind> {
    Kind::ALL.into_iter().find(|k| k.collection() == collection)
}
