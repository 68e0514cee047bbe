//! NAT gateways leave lost hosts: a loop, run by one server at a time
//! ([`crate::cluster::NAT_FAILOVER`]), that moves every NAT gateway whose
//! host is lost (or gone) to a ready host by rewriting its `host_id`. The
//! agents then follow the desired state: the new host builds the gateway
//! (and announces its elastic IP), the VPC's other hosts send to it.
//!
//! Each move is one store transaction that compares the gateway's revision
//! (a concurrent delete or move wins) and the new host's (it is still
//! ready as the snapshot saw it). What the lost host held is gone with it:
//! the gateway's connection tracking lives in its host's kernel, so
//! connections made through it must be made again, as when AWS's zonal NAT
//! gateway loses its zone. New connections work once the new host's agent
//! has built the gateway: the host's lost timeout, at most one period of
//! this loop, and one reconcile pass.

use std::collections::HashMap;
use std::time::Duration;

use evnet_model::*;
use evnet_store::Txn;

use crate::cache::Snapshot;
use crate::common::*;
use crate::keys;
use crate::state::AppState;

/// One gateway to move: its id and revision, and the host it goes to with
/// that host's revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub nat_gateway_id: String,
    pub revision: u64,
    pub from: String,
    pub to: String,
    pub to_revision: u64,
}

/// The gateways to move now: each one whose host is not ready — lost, or
/// no longer registered — goes to the ready host with the fewest NAT
/// gateways (counting the moves before it), then the fewest instances, then
/// by id, as placement at creation does. None when no host is ready: the
/// gateway stays where it is until one is.
pub fn moves(snap: &Snapshot) -> Vec<Move> {
    let ready: Vec<&Host> = snap.hosts.values().map(|h| &*h.value).filter(|h| h.status == HostStatus::Ready).collect();
    let mut nats: HashMap<&str, usize> = HashMap::new();
    for n in snap.nat_gateways.values() {
        *nats.entry(n.value.host_id.as_str()).or_default() += 1;
    }
    let mut out = Vec::new();
    for n in snap.nat_gateways.values() {
        let n = &n.value;
        let stranded = snap.hosts.get(&n.host_id).is_none_or(|h| h.value.status != HostStatus::Ready);
        if !stranded {
            continue;
        }
        let Some(to) = ready.iter().min_by_key(|h| (nats.get(h.id.as_str()).copied().unwrap_or(0), snap.instance_count(&h.id), h.id.clone())) else {
            break;
        };
        *nats.entry(to.id.as_str()).or_default() += 1;
        let to_revision = snap.hosts.get(&to.id).map_or(0, |h| h.mod_revision);
        let revision = snap.nat_gateways.get(&n.id).map_or(0, |e| e.mod_revision);
        out.push(Move { nat_gateway_id: n.id.clone(), revision, from: n.host_id.clone(), to: to.id.clone(), to_revision });
    }
    out
}

/// Every second, while this server leads [`crate::cluster::NAT_FAILOVER`]:
/// the [`moves`], each in its own transaction.
pub async fn run(st: AppState) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if !st.cluster.leads(crate::cluster::NAT_FAILOVER) {
            continue;
        }
        let planned: Vec<(Move, NatGateway)> = {
            let snap = st.cache.read();
            moves(&snap).into_iter().filter_map(|m| Some((m.clone(), arc_clone(&snap.nat_gateways.get(&m.nat_gateway_id)?.value)))).collect()
        };
        for (m, mut n) in planned {
            tracing::warn!(nat_gateway = %m.nat_gateway_id, from = %m.from, to = %m.to, "NAT gateway's host is not ready: moving it");
            n.host_id = m.to.clone();
            let k = keys::resource(Kind::NatGateway, &m.nat_gateway_id);
            let txn = Txn {
                compares: vec![cmp(k.clone(), m.revision), cmp(keys::resource(Kind::Host, &m.to), m.to_revision)],
                ops: vec![put(k, &n)],
            };
            match st.store.txn(txn).await {
                Ok(r) if r.succeeded => {}
                Ok(_) => tracing::info!(nat_gateway = %m.nat_gateway_id, "NAT gateway or host changed meanwhile; the next round decides again"),
                Err(e) => tracing::error!(error = %e, nat_gateway = %m.nat_gateway_id, "could not move the NAT gateway"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evnet_store::{EventKind, KeyValue, WatchEvent};
    use serde_json::{json, Value};

    fn put(snap: &mut Snapshot, rev: &mut u64, collection: &str, id: &str, v: Value) {
        *rev += 1;
        let kv = KeyValue { key: format!("/r/{collection}/{id}"), value: serde_json::to_vec(&v).unwrap(), create_revision: *rev, mod_revision: *rev, version: 1 };
        snap.apply(&WatchEvent { kind: EventKind::Put, kv });
        snap.revision = *rev;
    }

    fn common(id: &str) -> Value {
        json!({"id": id, "name": id, "tenant": "t1", "created_at": "2026-01-01T00:00:00Z"})
    }

    fn with(mut base: Value, extra: Value) -> Value {
        base.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        base
    }

    fn host(id: &str, status: &str) -> Value {
        with(common(id), json!({"underlay_ip": "198.18.0.1", "nic_mbps": 1000, "status": status, "last_heartbeat_ms": 0}))
    }

    fn nat(id: &str, host: &str) -> Value {
        with(common(id), json!({"vpc_id": "v1", "subnet_id": "s1", "private_ip": "10.1.1.5", "elastic_ip_id": "eipalloc-1", "state": "available", "host_id": host}))
    }

    #[test]
    fn gateways_of_lost_or_gone_hosts_move_to_the_least_loaded_ready_hosts() {
        let (mut snap, mut rev) = (Snapshot::default(), 0);
        for (h, s) in [("h1", "ready"), ("h2", "ready"), ("h3", "ready")] {
            put(&mut snap, &mut rev, "hosts", h, host(h, s));
        }
        put(&mut snap, &mut rev, "nat-gateways", "nat-1", nat("nat-1", "h1"));
        put(&mut snap, &mut rev, "nat-gateways", "nat-2", nat("nat-2", "h1"));
        put(&mut snap, &mut rev, "nat-gateways", "nat-3", nat("nat-3", "h2"));
        put(&mut snap, &mut rev, "nat-gateways", "nat-4", nat("nat-4", "h-gone"));
        assert_eq!(moves(&snap).iter().map(|m| (m.nat_gateway_id.as_str(), m.to.as_str())).collect::<Vec<_>>(), [("nat-4", "h3")], "a host no longer registered");
        put(&mut snap, &mut rev, "hosts", "h1", host("h1", "lost"));
        let m = moves(&snap);
        // h3 has none, h2 one: nat-1 to h3, then nat-2 to h2 (ties by id), nat-4 to h3.
        assert_eq!(
            m.iter().map(|m| (m.nat_gateway_id.as_str(), m.from.as_str(), m.to.as_str())).collect::<Vec<_>>(),
            [("nat-1", "h1", "h3"), ("nat-2", "h1", "h2"), ("nat-4", "h-gone", "h3")]
        );
        assert_eq!((m[0].revision, m[0].to_revision), (snap.nat_gateways["nat-1"].mod_revision, snap.hosts["h3"].mod_revision));
        // No ready host: nothing moves.
        for h in ["h2", "h3"] {
            put(&mut snap, &mut rev, "hosts", h, host(h, "lost"));
        }
        assert!(moves(&snap).is_empty());
        // Moved, the gateway stays.
        put(&mut snap, &mut rev, "hosts", "h2", host("h2", "ready"));
        for n in ["nat-1", "nat-2", "nat-3", "nat-4"] {
            put(&mut snap, &mut rev, "nat-gateways", n, nat(n, "h2"));
        }
        assert!(moves(&snap).is_empty());
    }
}
