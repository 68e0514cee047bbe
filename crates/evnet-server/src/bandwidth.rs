//! The bandwidth controller's server side: what one host cannot see.
//!
//! Agents report their ENIs' measured rate, demand and allocation per
//! direction about once a second (`POST /v1/hosts/{id}/bandwidth`); the
//! server keeps the latest report per host in memory (it is soft state:
//! lost on restart, rebuilt within a second) and answers with the caps it
//! last computed for that host's ENIs.
//!
//! Every second the controller ([`run`]) runs the allocator across all
//! hosts: each host's NIC in both directions as links, one flow per ENI and
//! direction with its reported demand, each ENI's guarantee, limit and
//! weight, and the bandwidth pools as aggregate caps spanning hosts
//! ([`compute_caps`], pure). Pool members get caps: their allocation plus an
//! equal part of what the pool leaves unused (so a member whose demand grows
//! can ramp up before the next round); other ENIs get none, so the agents'
//! 100 ms loops stay free to follow demand on their own links.
//!
//! Flows between ENIs are not known (the shapers count per ENI), so the
//! problem is per-ENI aggregates with the hose model: a receiver's guarantee
//! is held by the receiver host's shaper and local loop, against any number
//! of senders.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use evnet_alloc::{Allocator, Eni, Flow, Link, Pool, Problem};
use evnet_model::desired::{DirectionStats, EniBandwidthReport, EniCaps, HostBandwidthCaps, HostBandwidthReport};
use evnet_model::{BandwidthPool, Host};

use crate::common::now_ms;
use crate::state::AppState;

/// Reports older than this are ignored by the controller and shown as stale.
pub const REPORT_TTL_MS: u64 = 5_000;
/// How often the controller runs.
pub const PERIOD: Duration = Duration::from_secs(1);

/// One ENI's latest figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniFigures {
    pub host_id: String,
    pub tx: DirectionStats,
    pub rx: DirectionStats,
    pub updated_at_ms: u64,
}

#[derive(Debug, Default)]
struct Inner {
    reports: BTreeMap<String, (u64, HostBandwidthReport)>,
    caps: BTreeMap<String, HostBandwidthCaps>,
}

/// The latest reports and caps, shared by the API and the controller.
#[derive(Debug, Default)]
pub struct Board {
    inner: Mutex<Inner>,
    /// Controller rounds this server has run.
    pub rounds: std::sync::atomic::AtomicU64,
}

impl Board {
    /// Stores a host's report received at `at_ms`; answers the caps for its
    /// ENIs.
    pub fn record(&self, host_id: &str, report: HostBandwidthReport, at_ms: u64) -> HostBandwidthCaps {
        let mut g = self.inner.lock().expect("bandwidth board lock");
        g.reports.insert(host_id.to_string(), (at_ms, report));
        g.caps.get(host_id).cloned().unwrap_or_default()
    }

    /// The latest figures of one ENI, from whichever host reported it last.
    pub fn eni(&self, eni_id: &str) -> Option<EniFigures> {
        let g = self.inner.lock().expect("bandwidth board lock");
        g.reports
            .iter()
            .filter_map(|(h, (at, r))| r.enis.iter().find(|e| e.eni_id == eni_id).map(|e| (h, *at, e)))
            .max_by_key(|(_, at, _)| *at)
            .map(|(h, at, e)| EniFigures { host_id: h.clone(), tx: e.tx, rx: e.rx, updated_at_ms: at })
    }

    /// Every ENI's latest figures, by ENI id.
    pub fn all(&self) -> BTreeMap<String, EniFigures> {
        let g = self.inner.lock().expect("bandwidth board lock");
        let mut out: BTreeMap<String, EniFigures> = BTreeMap::new();
        for (h, (at, r)) in &g.reports {
            for e in &r.enis {
                if out.get(&e.eni_id).is_none_or(|f| f.updated_at_ms < *at) {
                    out.insert(e.eni_id.clone(), EniFigures { host_id: h.clone(), tx: e.tx, rx: e.rx, updated_at_ms: *at });
                }
            }
        }
        out
    }

    /// The fresh reports (received after `since_ms`).
    fn fresh(&self, since_ms: u64) -> BTreeMap<String, HostBandwidthReport> {
        let g = self.inner.lock().expect("bandwidth board lock");
        g.reports.iter().filter(|(_, (at, _))| *at >= since_ms).map(|(h, (_, r))| (h.clone(), r.clone())).collect()
    }

    fn set_caps(&self, caps: BTreeMap<String, HostBandwidthCaps>) {
        self.inner.lock().expect("bandwidth board lock").caps = caps;
    }

    /// Forgets hosts that have not reported since `before_ms`.
    fn expire(&self, before_ms: u64) {
        self.inner.lock().expect("bandwidth board lock").reports.retain(|_, (at, _)| *at >= before_ms);
    }
}

/// An ENI as the controller needs it: where it is and its contract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniContract {
    pub host_id: String,
    pub guaranteed_bps: u64,
    pub limit_bps: u64,
    pub weight: u32,
}

/// The caps for every host's ENIs, from the hosts (NIC capacities), the
/// ENIs' contracts, the pools and the fresh reports. Pure and
/// deterministic. Only pool members get caps.
pub fn compute_caps(
    hosts: &BTreeMap<String, Host>,
    enis: &BTreeMap<String, EniContract>,
    pools: &[BandwidthPool],
    reports: &BTreeMap<String, HostBandwidthReport>,
) -> BTreeMap<String, HostBandwidthCaps> {
    let mut link_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut problem = Problem::default();
    for (id, h) in hosts {
        link_of.insert(id.as_str(), problem.links.len());
        let c = h.nic_mbps.saturating_mul(1_000_000);
        problem.links.push(Link { capacity_bps: c });
        problem.links.push(Link { capacity_bps: c });
    }
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    let mut ids: Vec<&str> = vec![];
    for (host_id, r) in reports {
        let Some(&l) = link_of.get(host_id.as_str()) else { continue };
        for e in &r.enis {
            let Some(c) = enis.get(&e.eni_id) else { continue };
            if c.host_id != *host_id || index.contains_key(e.eni_id.as_str()) {
                continue;
            }
            let i = problem.enis.len();
            index.insert(e.eni_id.as_str(), i);
            ids.push(e.eni_id.as_str());
            let limit = c.limit_bps.max(1);
            problem.enis.push(Eni {
                guaranteed_tx_bps: c.guaranteed_bps.min(limit),
                guaranteed_rx_bps: c.guaranteed_bps.min(limit),
                limit_tx_bps: limit,
                limit_rx_bps: limit,
                weight: c.weight.max(1),
            });
            problem.flows.push(Flow { src: Some(i), dst: None, demand_bps: e.tx.demand_bps, path: vec![l] });
            problem.flows.push(Flow { src: None, dst: Some(i), demand_bps: e.rx.demand_bps, path: vec![l + 1] });
        }
    }
    let mut pool_members: Vec<(u64, Vec<usize>)> = vec![];
    for p in pools {
        let mut members: Vec<usize> = p.members.iter().filter_map(|m| index.get(m.as_str()).copied()).collect();
        members.sort_unstable();
        members.dedup();
        if members.is_empty() {
            continue;
        }
        let limit = p.limit_mbps.saturating_mul(1_000_000);
        problem.pools.push(Pool { limit_bps: limit, members: members.clone() });
        pool_members.push((limit, members));
    }
    let mut out: BTreeMap<String, HostBandwidthCaps> = BTreeMap::new();
    if pool_members.is_empty() {
        return out;
    }
    let alloc = match Allocator::new().try_allocate(&problem) {
        Ok(a) => a.clone(),
        Err(e) => {
            tracing::error!(error = %e, "bandwidth controller: invalid problem; no caps this round");
            return out;
        }
    };
    for (limit, members) in &pool_members {
        let n = members.len() as u64;
        let used_tx: u64 = members.iter().map(|&i| alloc.eni_tx_bps[i]).sum();
        let used_rx: u64 = members.iter().map(|&i| alloc.eni_rx_bps[i]).sum();
        let spare_tx = limit.saturating_sub(used_tx) / n;
        let spare_rx = limit.saturating_sub(used_rx) / n;
        for &i in members {
            let id = ids[i];
            let host = &enis[id].host_id;
            out.entry(host.clone()).or_default().enis.push(EniCaps {
                eni_id: id.to_string(),
                tx_cap_bps: Some(alloc.eni_tx_bps[i] + spare_tx),
                rx_cap_bps: Some(alloc.eni_rx_bps[i] + spare_rx),
            });
        }
    }
    for c in out.values_mut() {
        c.enis.sort_by(|a, b| a.eni_id.cmp(&b.eni_id));
    }
    out
}

/// One controller round over the cache and the board.
pub fn round(st: &AppState, now: u64) {
    st.bandwidth.expire(now.saturating_sub(10 * REPORT_TTL_MS));
    let reports = st.bandwidth.fresh(now.saturating_sub(REPORT_TTL_MS));
    let (hosts, enis, pools) = {
        let snap = st.cache.read();
        let hosts: BTreeMap<String, Host> = snap.hosts.iter().map(|(k, e)| (k.clone(), (*e.value).clone())).collect();
        let enis: BTreeMap<String, EniContract> = snap
            .enis
            .iter()
            .filter_map(|(k, e)| {
                let a = e.value.attachment.as_ref()?;
                let nic = hosts.get(&a.host_id)?.nic_mbps;
                let b = &e.value.bandwidth;
                Some((
                    k.clone(),
                    EniContract { host_id: a.host_id.clone(), guaranteed_bps: b.guaranteed_bps(), limit_bps: b.limit_bps(nic), weight: b.weight },
                ))
            })
            .collect();
        let pools: Vec<BandwidthPool> = snap.bandwidth_pools.values().map(|p| (*p.value).clone()).collect();
        (hosts, enis, pools)
    };
    st.bandwidth.set_caps(compute_caps(&hosts, &enis, &pools, &reports));
}

/// Runs the controller every second, on the server that leads the
/// bandwidth loop, until the task is dropped. Other servers forward the
/// agents' reports to the leader (see `api::stats::report`).
pub async fn run(st: AppState) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if st.cluster.leads(crate::cluster::BANDWIDTH) {
            round(&st, now_ms());
            st.bandwidth.rounds.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// The report of an ENI with these demands (for tests and tools).
pub fn report_of(eni_id: &str, tx_demand_bps: u64, rx_demand_bps: u64) -> EniBandwidthReport {
    EniBandwidthReport {
        eni_id: eni_id.to_string(),
        tx: DirectionStats { demand_bps: tx_demand_bps, ..Default::default() },
        rx: DirectionStats { demand_bps: rx_demand_bps, ..Default::default() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evnet_model::{HostStatus, PoolScope};

    const M: u64 = 1_000_000;

    fn host(id: &str, nic: u64) -> (String, Host) {
        (
            id.to_string(),
            Host {
                id: id.into(),
                name: id.into(),
                tags: Default::default(),
                tenant: String::new(),
                created_at: String::new(),
                revision: 0,
                underlay_ip: "198.18.0.1".parse().unwrap(),
                nic_mbps: nic,
                labels: Default::default(),
                status: HostStatus::Ready,
                last_heartbeat_ms: 0,
                applied_generation: 0,
                failures: vec![],
                netns: None,
            },
        )
    }

    fn pool(limit_mbps: u64, members: &[&str]) -> BandwidthPool {
        BandwidthPool {
            id: "bwp-1".into(),
            name: "p".into(),
            tags: Default::default(),
            tenant: "t".into(),
            created_at: String::new(),
            revision: 0,
            scope: PoolScope::Tenant,
            vpc_id: None,
            limit_mbps,
            members: members.iter().map(|m| m.to_string()).collect(),
        }
    }

    fn contract(host: &str, g: u64) -> EniContract {
        EniContract { host_id: host.into(), guaranteed_bps: g * M, limit_bps: 1000 * M, weight: 1 }
    }

    #[test]
    fn a_pool_spanning_hosts_is_shared_and_capped() {
        let hosts: BTreeMap<String, Host> = [host("h1", 1000), host("h2", 1000)].into_iter().collect();
        let enis: BTreeMap<String, EniContract> =
            [("a".to_string(), contract("h1", 0)), ("b".to_string(), contract("h2", 0)), ("c".to_string(), contract("h2", 0))].into_iter().collect();
        let reports: BTreeMap<String, HostBandwidthReport> = [
            ("h1".to_string(), HostBandwidthReport { enis: vec![report_of("a", 1000 * M, 10 * M)] }),
            ("h2".to_string(), HostBandwidthReport { enis: vec![report_of("b", 1000 * M, 10 * M), report_of("c", 1000 * M, 0)] }),
        ]
        .into_iter()
        .collect();
        let caps = compute_caps(&hosts, &enis, &[pool(300, &["a", "b"])], &reports);
        // a and b share 300 in tx (150 each); rx demand is small: each gets
        // its 10 plus half of the 280 left.
        assert_eq!(
            caps["h1"].enis,
            vec![EniCaps { eni_id: "a".into(), tx_cap_bps: Some(150 * M), rx_cap_bps: Some(150 * M) }]
        );
        assert_eq!(caps["h2"].enis, vec![EniCaps { eni_id: "b".into(), tx_cap_bps: Some(150 * M), rx_cap_bps: Some(150 * M) }]);
        // c is in no pool: no cap.
        assert!(caps["h2"].enis.iter().all(|c| c.eni_id != "c"));
        // Without pools, nothing is capped.
        assert!(compute_caps(&hosts, &enis, &[], &reports).is_empty());
    }

    #[test]
    fn guarantees_inside_a_pool_are_respected() {
        let hosts: BTreeMap<String, Host> = [host("h1", 1000), host("h2", 1000)].into_iter().collect();
        let enis: BTreeMap<String, EniContract> = [("a".to_string(), contract("h1", 200)), ("b".to_string(), contract("h2", 0))].into_iter().collect();
        let reports: BTreeMap<String, HostBandwidthReport> = [
            ("h1".to_string(), HostBandwidthReport { enis: vec![report_of("a", 1000 * M, 0)] }),
            ("h2".to_string(), HostBandwidthReport { enis: vec![report_of("b", 1000 * M, 0)] }),
        ]
        .into_iter()
        .collect();
        let caps = compute_caps(&hosts, &enis, &[pool(300, &["a", "b"])], &reports);
        let a = caps["h1"].enis[0].tx_cap_bps.unwrap();
        let b = caps["h2"].enis[0].tx_cap_bps.unwrap();
        assert_eq!(a + b, 300 * M);
        assert_eq!(a, 250 * M, "200 guaranteed + half of the other 100");
    }

    #[test]
    fn the_board_answers_caps_and_latest_figures() {
        let board = Board::default();
        assert_eq!(board.record("h1", HostBandwidthReport { enis: vec![report_of("a", 5, 6)] }, 1000), HostBandwidthCaps::default());
        board.set_caps([("h1".to_string(), HostBandwidthCaps { enis: vec![EniCaps { eni_id: "a".into(), tx_cap_bps: Some(1), rx_cap_bps: None }] })].into_iter().collect());
        let caps = board.record("h1", HostBandwidthReport { enis: vec![report_of("a", 7, 8)] }, 2000);
        assert_eq!(caps.enis.len(), 1);
        // The ENI moved to h2: the newer report wins.
        board.record("h2", HostBandwidthReport { enis: vec![report_of("a", 9, 10)] }, 3000);
        let f = board.eni("a").unwrap();
        assert_eq!((f.host_id.as_str(), f.tx.demand_bps, f.updated_at_ms), ("h2", 9, 3000));
        assert_eq!(board.all()["a"].rx.demand_bps, 10);
        board.expire(2500);
        assert_eq!(board.eni("a").unwrap().host_id, "h2");
        assert!(board.fresh(2500).contains_key("h2") && !board.fresh(2500).contains_key("h1"));
    }
}
