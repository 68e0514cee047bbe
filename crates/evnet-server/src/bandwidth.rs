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
//! On the tc-BPF data plane the agents also report what each local ENI
//! sends to each ENI on another host (pairs, metered before their caps), at
//! once when a pair starts and every 50 ms while any is active. The
//! controller then runs a round at once ([`Board::wait_for_pairs`]) and
//! shares each receiving host's NIC among the pairs into it
//! ([`compute_pair_caps`], pure): a receiver's guarantee is partitioned
//! among its active senders (the hose model, as ElasticSwitch does), an
//! active pair is taken to want at least its part of the guarantee (so a
//! sender switching on is given it in the round its first packets are
//! reported, whatever its meter has seen yet), spare capacity goes by the
//! receivers' weights, and where the pairs into a host would oversubscribe
//! its NIC each one is capped at the sender's host — the receiving host's
//! shapers cannot hold a guarantee against senders that do not back off,
//! since their packets fill its NIC before any shaper of its own sees them.
//! Elsewhere a receiver's guarantee is held by its host's shapers.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use evnet_alloc::pairs::{PairCapper, PairDemand, PairNetwork, PairReceiver};
pub use evnet_alloc::pairs::{PAIR_CONTENDED_PERCENT, PAIR_FILL_PERCENT, guarantee_floor};
use evnet_alloc::{Allocator, Eni, Flow, Link, Pool, Problem};
use evnet_model::desired::{DirectionStats, EniBandwidthReport, EniCaps, HostBandwidthCaps, HostBandwidthReport, PairCaps};
use evnet_model::{BandwidthPool, Host};

use crate::common::now_ms;
use crate::state::AppState;

/// Reports older than this are ignored by the controller and shown as stale.
pub const REPORT_TTL_MS: u64 = 5_000;
/// How often the controller runs when no pair report asks for a round.
pub const PERIOD: Duration = Duration::from_secs(1);
/// The least time between two rounds that pair reports asked for, unless
/// a pair switched on or off: a change in rates alone waits this long for
/// the other hosts' reports of the same moment.
pub const PAIR_ROUND_SPACING: Duration = Duration::from_millis(5);

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
    /// The last version given to any host's caps.
    version: u64,
}

/// The latest reports and caps, shared by the API and the controller.
#[derive(Debug, Default)]
pub struct Board {
    inner: Mutex<Inner>,
    /// Controller rounds this server has run.
    pub rounds: std::sync::atomic::AtomicU64,
    /// Woken by a report whose pairs differ from the host's last ones: the
    /// controller runs a round at once.
    pairs_changed: tokio::sync::Notify,
    /// Set with `pairs_changed` when a pair switched on or off (sending
    /// where it did not, or no more): that round does not wait
    /// [`PAIR_ROUND_SPACING`].
    pairs_switched: std::sync::atomic::AtomicBool,
    /// The last version given to any host's caps: the caps watches wait on
    /// it.
    caps_version: tokio::sync::watch::Sender<u64>,
}

impl Board {
    /// Stores a host's report received at `at_ms`; answers the caps for its
    /// ENIs.
    pub fn record(&self, host_id: &str, report: HostBandwidthReport, at_ms: u64) -> HostBandwidthCaps {
        let mut g = self.inner.lock().expect("bandwidth board lock");
        let had = g.reports.get(host_id).map(|(_, r)| r.pairs.as_slice()).unwrap_or_default();
        let wake = had != report.pairs.as_slice();
        let switched = wake && sending(had) != sending(&report.pairs);
        g.reports.insert(host_id.to_string(), (at_ms, report));
        let caps = g.caps.get(host_id).cloned().unwrap_or_default();
        drop(g);
        if switched {
            self.pairs_switched.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        if wake {
            self.pairs_changed.notify_one();
        }
        caps
    }

    /// Returns when a report changed its host's pairs (at once if one did
    /// since the last call): whether a pair switched on or off since.
    pub async fn wait_for_pairs(&self) -> bool {
        self.pairs_changed.notified().await;
        self.pairs_switched.swap(false, std::sync::atomic::Ordering::Relaxed)
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

    /// Replaces every host's caps; a host whose caps changed gets a new
    /// version, and its watches answer.
    fn set_caps(&self, mut caps: BTreeMap<String, HostBandwidthCaps>) {
        let mut g = self.inner.lock().expect("bandwidth board lock");
        let hosts: std::collections::BTreeSet<String> = caps.keys().chain(g.caps.keys()).cloned().collect();
        let mut moved = false;
        for h in hosts {
            let old = g.caps.get(&h).cloned().unwrap_or_default();
            let new = caps.entry(h).or_default();
            let same = old.enis == new.enis && old.pairs == new.pairs;
            new.version = if same {
                old.version
            } else {
                moved = true;
                g.version += 1;
                g.version
            };
        }
        // Hosts with no caps keep an entry (empty, with its version) so a
        // lifted cap is a change the watches see.
        g.caps = caps;
        let v = g.version;
        drop(g);
        if moved {
            self.caps_version.send_replace(v);
        }
    }

    /// The caps of `host` once their version passes `after`, or at
    /// `deadline` as they are (the caps watch, a long poll).
    pub async fn wait_caps(&self, host: &str, after: u64, deadline: tokio::time::Instant) -> HostBandwidthCaps {
        let mut rx = self.caps_version.subscribe();
        loop {
            let caps = self.inner.lock().expect("bandwidth board lock").caps.get(host).cloned().unwrap_or_default();
            if caps.version > after {
                return caps;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return caps },
                _ = tokio::time::sleep_until(deadline) => return caps,
            }
        }
    }

    /// Forgets hosts that have not reported since `before_ms`.
    fn expire(&self, before_ms: u64) {
        self.inner.lock().expect("bandwidth board lock").reports.retain(|_, (at, _)| *at >= before_ms);
    }
}

/// The pairs of a report that are sending, by their ENIs.
fn sending(pairs: &[evnet_model::desired::PairBandwidthReport]) -> std::collections::BTreeSet<(&str, &str)> {
    pairs.iter().filter(|p| p.rate_bps > 0).map(|p| (p.src_eni_id.as_str(), p.dst_eni_id.as_str())).collect()
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
    let mut problem = Problem::default();
    let link_of = nic_links(hosts, &mut problem);
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

/// Adds each host's NIC to `problem` as two links, transmit then receive:
/// the index of each host's transmit link.
fn nic_links<'a>(hosts: &'a BTreeMap<String, Host>, problem: &mut Problem) -> BTreeMap<&'a str, usize> {
    let mut link_of = BTreeMap::new();
    for (id, h) in hosts {
        link_of.insert(id.as_str(), problem.links.len());
        let c = h.nic_mbps.saturating_mul(1_000_000);
        problem.links.push(Link { capacity_bps: c });
        problem.links.push(Link { capacity_bps: c });
    }
    link_of
}

/// The racks the hosts' labels name (`rack`, and `rack_uplink_mbps` on at
/// least one host of it; the smallest holds), in the order of `hosts`: per
/// host its rack's index, or `usize::MAX` for a host in no known rack; per
/// rack its uplink capacity (bit/s). A rack no host gives a valid uplink
/// for is left out: its hosts' pairs cross only their NICs.
pub fn racks_of_hosts(hosts: &BTreeMap<String, Host>) -> (Vec<usize>, Vec<u64>) {
    use evnet_model::validate::{LABEL_RACK, LABEL_RACK_UPLINK_MBPS, rack_uplink_mbps};
    let mut uplink_mbps: BTreeMap<&str, u64> = BTreeMap::new();
    for h in hosts.values() {
        if let (Some(rack), Some(m)) = (h.labels.get(LABEL_RACK), h.labels.get(LABEL_RACK_UPLINK_MBPS).and_then(|v| rack_uplink_mbps(v))) {
            let e = uplink_mbps.entry(rack.as_str()).or_insert(m);
            *e = (*e).min(m);
        }
    }
    let index: BTreeMap<&str, usize> = uplink_mbps.keys().enumerate().map(|(i, r)| (*r, i)).collect();
    let host_rack = hosts.values().map(|h| h.labels.get(LABEL_RACK).and_then(|r| index.get(r.as_str()).copied()).unwrap_or(usize::MAX)).collect();
    (host_rack, uplink_mbps.values().map(|m| m.saturating_mul(1_000_000)).collect())
}

/// The caps on what ENIs send to ENIs on other hosts, per sending host:
/// each receiving host's NIC (and, for hosts whose labels give their rack
/// and its uplink, the racks' uplinks: [`racks_of_hosts`]) shared among the
/// pairs across it when their demands would oversubscribe it, by
/// [`evnet_alloc::pairs::PairCapper`] (the same code the simulator runs;
/// its docs say how). Pure and deterministic.
pub fn compute_pair_caps(
    hosts: &BTreeMap<String, Host>,
    enis: &BTreeMap<String, EniContract>,
    reports: &BTreeMap<String, HostBandwidthReport>,
) -> BTreeMap<String, Vec<PairCaps>> {
    let host_index: BTreeMap<&str, usize> = hosts.keys().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    let nic_bps: Vec<u64> = hosts.values().map(|h| h.nic_mbps.saturating_mul(1_000_000)).collect();
    let (host_rack, rack_uplink_bps) = racks_of_hosts(hosts);
    let mut receiver_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut receivers = vec![];
    let mut demands = vec![];
    // (sending host, pair), in the order of `demands`.
    let mut pairs: Vec<(&str, &evnet_model::desired::PairBandwidthReport)> = vec![];
    for (host_id, r) in reports {
        let Some(&src_host) = host_index.get(host_id.as_str()) else { continue };
        for p in &r.pairs {
            let (Some(src), Some(dst)) = (enis.get(&p.src_eni_id), enis.get(&p.dst_eni_id)) else { continue };
            if src.host_id != *host_id || dst.host_id == *host_id {
                continue;
            }
            let Some(&dst_host) = host_index.get(dst.host_id.as_str()) else { continue };
            let receiver = *receiver_of.entry(p.dst_eni_id.as_str()).or_insert_with(|| {
                receivers.push(PairReceiver { guaranteed_bps: dst.guaranteed_bps, limit_bps: dst.limit_bps, weight: dst.weight });
                receivers.len() - 1
            });
            demands.push(PairDemand { src_host, dst_host, receiver, rate_bps: p.rate_bps, demand_bps: p.demand_bps });
            pairs.push((host_id.as_str(), p));
        }
    }
    let mut caps = vec![];
    if let Err(e) = PairCapper::new().caps(&PairNetwork { nic_bps: &nic_bps, host_rack: &host_rack, rack_uplink_bps: &rack_uplink_bps }, &receivers, &demands, &mut caps) {
        tracing::error!(error = %e, "bandwidth controller: invalid pair problem; no pair caps this round");
    }
    let mut out: BTreeMap<String, Vec<PairCaps>> = BTreeMap::new();
    for ((host, p), cap) in pairs.into_iter().zip(caps) {
        if let Some(cap_bps) = cap {
            out.entry(host.to_string()).or_default().push(PairCaps { src_eni_id: p.src_eni_id.clone(), dst_eni_id: p.dst_eni_id.clone(), cap_bps });
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

/// The send caps the pair caps make for whole ENIs, per host: an ENI all
/// of whose reported pairs are capped is capped at their sum. Its host's
/// shaping tree then holds it there with a queue (its class's ceiling),
/// which a TCP flow follows smoothly, where the pairs' policers drop what
/// goes over (TCP loses a burst at once and may stall for a
/// retransmission timeout): the policers stay as the bound for ENIs that
/// send to several hosts. Pure.
pub fn send_caps_of_pairs(reports: &BTreeMap<String, HostBandwidthReport>, pair_caps: &BTreeMap<String, Vec<PairCaps>>) -> BTreeMap<String, Vec<(String, u64)>> {
    let mut out: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (host, caps) in pair_caps {
        let Some(r) = reports.get(host) else { continue };
        let senders: std::collections::BTreeSet<&str> = caps.iter().map(|c| c.src_eni_id.as_str()).collect();
        for src in senders {
            let mut sum = 0u64;
            let mut all = true;
            for p in r.pairs.iter().filter(|p| p.src_eni_id == src) {
                match caps.iter().find(|c| c.src_eni_id == src && c.dst_eni_id == p.dst_eni_id) {
                    Some(c) => sum = sum.saturating_add(c.cap_bps),
                    None => all = false,
                }
            }
            if all && sum > 0 {
                out.entry(host.clone()).or_default().push((src.to_string(), sum));
            }
        }
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
    let mut caps = compute_caps(&hosts, &enis, &pools, &reports);
    let pair_caps = compute_pair_caps(&hosts, &enis, &reports);
    for (host, send) in send_caps_of_pairs(&reports, &pair_caps) {
        let c = caps.entry(host).or_default();
        for (eni, cap) in send {
            match c.enis.iter_mut().find(|e| e.eni_id == eni) {
                Some(e) => e.tx_cap_bps = Some(e.tx_cap_bps.map_or(cap, |t| t.min(cap))),
                None => c.enis.push(EniCaps { eni_id: eni, tx_cap_bps: Some(cap), rx_cap_bps: None }),
            }
        }
        c.enis.sort_by(|a, b| a.eni_id.cmp(&b.eni_id));
    }
    if !pair_caps.is_empty() {
        tracing::debug!(caps = ?pair_caps.iter().map(|(h, c)| (h, c.iter().map(|c| c.cap_bps / 1_000_000).collect::<Vec<_>>())).collect::<Vec<_>>(), "pair caps computed");
    }
    for (host, pairs) in pair_caps {
        caps.entry(host).or_default().pairs = pairs;
    }
    st.bandwidth.set_caps(caps);
}

/// Runs the controller every second and at once when a report changed its
/// pairs (after [`PAIR_ROUND_SPACING`] unless a pair switched on or off), on
/// the server that leads the bandwidth loop, until the task is dropped. Other servers forward the
/// agents' reports to the leader (see `api::stats::report`).
pub async fn run(st: AppState) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            switched = st.bandwidth.wait_for_pairs() => if !switched {
                tokio::time::sleep(PAIR_ROUND_SPACING).await
            },
        }
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
            ("h1".to_string(), HostBandwidthReport { pairs: vec![], enis: vec![report_of("a", 1000 * M, 10 * M)] }),
            ("h2".to_string(), HostBandwidthReport { pairs: vec![], enis: vec![report_of("b", 1000 * M, 10 * M), report_of("c", 1000 * M, 0)] }),
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
            ("h1".to_string(), HostBandwidthReport { pairs: vec![], enis: vec![report_of("a", 1000 * M, 0)] }),
            ("h2".to_string(), HostBandwidthReport { pairs: vec![], enis: vec![report_of("b", 1000 * M, 0)] }),
        ]
        .into_iter()
        .collect();
        let caps = compute_caps(&hosts, &enis, &[pool(300, &["a", "b"])], &reports);
        let a = caps["h1"].enis[0].tx_cap_bps.unwrap();
        let b = caps["h2"].enis[0].tx_cap_bps.unwrap();
        assert_eq!(a + b, 300 * M);
        assert_eq!(a, 250 * M, "200 guaranteed + half of the other 100");
    }

    fn pair(src: &str, dst: &str, rate_mbps: u64, demand_mbps: u64) -> evnet_model::desired::PairBandwidthReport {
        evnet_model::desired::PairBandwidthReport {
            src_eni_id: src.into(),
            dst_eni_id: dst.into(),
            rate_bps: rate_mbps * M,
            demand_bps: demand_mbps * M,
            cap_bps: None,
        }
    }

    fn pair_reports(pairs: &[(&str, Vec<evnet_model::desired::PairBandwidthReport>)]) -> BTreeMap<String, HostBandwidthReport> {
        pairs.iter().map(|(h, p)| (h.to_string(), HostBandwidthReport { enis: vec![], pairs: p.clone() })).collect()
    }

    /// Three senders on three hosts into two receivers on a fourth host
    /// whose NIC is 500 Mbit/s; r1 has a 300 Mbit/s guarantee.
    fn incast() -> (BTreeMap<String, Host>, BTreeMap<String, EniContract>) {
        let hosts = [host("h1", 500), host("h2", 500), host("h3", 500), host("h4", 500)].into_iter().collect();
        let enis = [
            ("s1".to_string(), contract("h1", 0)),
            ("s2".to_string(), contract("h2", 0)),
            ("s3".to_string(), contract("h3", 0)),
            ("r1".to_string(), contract("h4", 300)),
            ("r2".to_string(), contract("h4", 0)),
        ]
        .into_iter()
        .collect();
        (hosts, enis)
    }

    fn cap_of(caps: &BTreeMap<String, Vec<PairCaps>>, host: &str, src: &str) -> u64 {
        caps[host].iter().find(|c| c.src_eni_id == src).expect("capped").cap_bps
    }

    #[test]
    fn floods_into_a_host_are_capped_so_a_receiver_keeps_its_guarantee() {
        let (hosts, enis) = incast();
        let nic = 500 * M / 100 * PAIR_FILL_PERCENT;
        // The floods alone: each gets half of the NIC.
        let floods = pair_reports(&[("h2", vec![pair("s2", "r2", 400, 500)]), ("h3", vec![pair("s3", "r2", 400, 500)])]);
        let caps = compute_pair_caps(&hosts, &enis, &floods);
        assert_eq!(cap_of(&caps, "h2", "s2"), nic / 2);
        assert_eq!(cap_of(&caps, "h3", "s3"), nic / 2);
        // s1 switches on: its first report shows little, but it is given
        // r1's guarantee (and a quarter) at once; the floods share the rest.
        let mut onset = floods.clone();
        onset.insert("h1".into(), HostBandwidthReport { enis: vec![], pairs: vec![pair("s1", "r1", 5, 8)] });
        let caps = compute_pair_caps(&hosts, &enis, &onset);
        let s1 = cap_of(&caps, "h1", "s1");
        assert!(s1 >= guarantee_floor(300 * M), "s1 capped at {s1}");
        let (s2, s3) = (cap_of(&caps, "h2", "s2"), cap_of(&caps, "h3", "s3"));
        assert_eq!(s2, s3);
        assert!(s1 + s2 + s3 <= nic, "{s1} + {s2} + {s3} over the NIC's {nic}");
        // All backlogged: r1 holds 300 and gets half the spare by weight
        // (r1 weight 1 against r2's 1 split over its two senders).
        let mut all = floods.clone();
        all.insert("h1".into(), HostBandwidthReport { enis: vec![], pairs: vec![pair("s1", "r1", 300, 500)] });
        let caps = compute_pair_caps(&hosts, &enis, &all);
        let s1 = cap_of(&caps, "h1", "s1");
        assert_eq!(s1, 300 * M + (nic - 300 * M) / 2);
        // The floods stop (their pairs idle): s1 may fill the NIC.
        let alone = pair_reports(&[("h1", vec![pair("s1", "r1", 300, 500)]), ("h2", vec![pair("s2", "r2", 0, 0)])]);
        let caps = compute_pair_caps(&hosts, &enis, &alone);
        assert_eq!(cap_of(&caps, "h1", "s1"), nic);
        // An idle pair keeps no part of a guarantee and is not capped.
        assert!(!caps.contains_key("h2"));
    }

    fn racked(id: &str, rack: &str, uplink_mbps: Option<&str>) -> (String, Host) {
        let (id, mut h) = host(id, 1000);
        h.labels.insert("rack".into(), rack.into());
        if let Some(m) = uplink_mbps {
            h.labels.insert("rack_uplink_mbps".into(), m.into());
        }
        (id, h)
    }

    #[test]
    fn racks_come_from_the_hosts_labels_and_the_smallest_uplink_holds() {
        let hosts: BTreeMap<String, Host> =
            [racked("h1", "a", Some("800")), racked("h2", "a", Some("500")), racked("h3", "b", None), host("h4", 1000), racked("h5", "c", Some("9G"))].into_iter().collect();
        let (host_rack, uplink) = racks_of_hosts(&hosts);
        // Rack a only: b has no uplink, c's label is not a number of Mbit/s.
        assert_eq!(uplink, vec![500 * M]);
        assert_eq!(host_rack, vec![0, 0, usize::MAX, usize::MAX, usize::MAX]);
    }

    #[test]
    fn pairs_between_racks_are_capped_to_fit_the_senders_rack_uplink() {
        let enis: BTreeMap<String, EniContract> = [
            ("s1".to_string(), contract("h1", 0)),
            ("s2".to_string(), contract("h2", 100)),
            ("r1".to_string(), contract("h3", 0)),
            ("r2".to_string(), contract("h4", 100)),
        ]
        .into_iter()
        .collect();
        // 600 Mbit/s into each receiving NIC of 1000: no NIC is contended.
        let reports = pair_reports(&[("h1", vec![pair("s1", "r1", 600, 600)]), ("h2", vec![pair("s2", "r2", 600, 600)])]);
        let flat: BTreeMap<String, Host> = [host("h1", 1000), host("h2", 1000), host("h3", 1000), host("h4", 1000)].into_iter().collect();
        assert!(compute_pair_caps(&flat, &enis, &reports).is_empty());
        // Rack a's uplink is 500: both pairs cross it, and fit it.
        let hosts: BTreeMap<String, Host> =
            [racked("h1", "a", Some("500")), racked("h2", "a", None), racked("h3", "b", Some("2000")), racked("h4", "b", None)].into_iter().collect();
        let caps = compute_pair_caps(&hosts, &enis, &reports);
        let (c1, c2) = (cap_of(&caps, "h1", "s1"), cap_of(&caps, "h2", "s2"));
        assert!(c1 + c2 <= 500 * M / 100 * PAIR_FILL_PERCENT, "{c1} + {c2}");
        assert!(c2 >= 100 * M, "r2's guarantee holds across the uplink: {c2}");
        // Both racks the same: no uplink between them.
        let same: BTreeMap<String, Host> =
            [racked("h1", "a", Some("500")), racked("h2", "a", None), racked("h3", "a", None), racked("h4", "a", None)].into_iter().collect();
        assert!(compute_pair_caps(&same, &enis, &reports).is_empty());
    }

    #[test]
    fn pairs_that_fit_the_receiving_nic_and_pairs_within_a_host_are_not_capped() {
        let (hosts, enis) = incast();
        let fit = pair_reports(&[("h2", vec![pair("s2", "r2", 80, 100)]), ("h3", vec![pair("s3", "r2", 150, 200)])]);
        assert!(compute_pair_caps(&hosts, &enis, &fit).is_empty());
        // The same demands into r1, whose guarantee they are taken to want
        // at least: over the NIC, so capped.
        let floor = pair_reports(&[("h2", vec![pair("s2", "r2", 100, 150)]), ("h3", vec![pair("s3", "r1", 200, 250)])]);
        assert!(cap_of(&compute_pair_caps(&hosts, &enis, &floor), "h3", "s3") >= guarantee_floor(300 * M));
        // A pair reported by a host its sender is not on, or into the
        // sender's own host, or naming an unknown ENI, is ignored.
        let odd = pair_reports(&[
            ("h1", vec![pair("s2", "r2", 900, 900), pair("s1", "nobody", 900, 900)]),
            ("h4", vec![pair("r1", "r2", 900, 900)]),
        ]);
        assert!(compute_pair_caps(&hosts, &enis, &odd).is_empty());
    }

    #[test]
    fn an_eni_whose_pairs_are_all_capped_is_capped_at_their_sum() {
        let reports = pair_reports(&[("h1", vec![pair("a", "x", 100, 200), pair("a", "y", 100, 200), pair("b", "x", 10, 20), pair("b", "z", 10, 20)])]);
        let caps: BTreeMap<String, Vec<PairCaps>> = [(
            "h1".to_string(),
            vec![
                PairCaps { src_eni_id: "a".into(), dst_eni_id: "x".into(), cap_bps: 100 * M },
                PairCaps { src_eni_id: "a".into(), dst_eni_id: "y".into(), cap_bps: 50 * M },
                PairCaps { src_eni_id: "b".into(), dst_eni_id: "x".into(), cap_bps: 30 * M },
            ],
        )]
        .into_iter()
        .collect();
        // b also sends to z, uncapped: only its policer holds its pair into x.
        assert_eq!(send_caps_of_pairs(&reports, &caps)["h1"], vec![("a".to_string(), 150 * M)]);
    }

    #[tokio::test]
    async fn a_caps_watch_answers_when_its_hosts_caps_change() {
        let board = std::sync::Arc::new(Board::default());
        let cap = |m| HostBandwidthCaps { enis: vec![EniCaps { eni_id: "a".into(), tx_cap_bps: Some(m), rx_cap_bps: None }], pairs: vec![], version: 0 };
        board.set_caps([("h1".to_string(), cap(M))].into_iter().collect());
        let v1 = board.record("h1", HostBandwidthReport::default(), 1).version;
        assert!(v1 > 0);
        let far = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        // Past the version it has: at once.
        assert_eq!(board.wait_caps("h1", 0, far).await.version, v1);
        // Waiting: another host's change does not answer it, its own does.
        let b = board.clone();
        let waiter = tokio::spawn(async move { b.wait_caps("h1", v1, far).await });
        board.set_caps([("h1".to_string(), cap(M)), ("h2".to_string(), cap(M))].into_iter().collect());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "h1's caps did not change");
        board.set_caps([("h2".to_string(), cap(M))].into_iter().collect());
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.unwrap().unwrap();
        assert!(got.version > v1 && got.enis.is_empty(), "h1's cap lifted: {got:?}");
        // Nothing changes: the deadline answers with the caps as they are.
        let soon = tokio::time::Instant::now() + std::time::Duration::from_millis(50);
        assert_eq!(board.wait_caps("h1", got.version, soon).await.version, got.version);
    }

    #[test]
    fn a_changed_pair_report_wakes_the_controller() {
        let board = Board::default();
        let woke = |b: &Board| {
            let n = b.pairs_changed.notified();
            tokio::pin!(n);
            n.as_mut().enable()
        };
        let switched = |b: &Board| b.pairs_switched.swap(false, std::sync::atomic::Ordering::Relaxed);
        board.record("h1", HostBandwidthReport { enis: vec![], pairs: vec![pair("s1", "r1", 5, 8)] }, 1);
        assert!(woke(&board), "new pairs");
        assert!(switched(&board), "a pair that switched on runs its round without the spacing");
        board.record("h1", HostBandwidthReport { enis: vec![], pairs: vec![pair("s1", "r1", 5, 8)] }, 2);
        assert!(!woke(&board), "the same pairs again");
        board.record("h1", HostBandwidthReport { enis: vec![], pairs: vec![pair("s1", "r1", 6, 8)] }, 3);
        assert!(woke(&board), "a new rate");
        assert!(!switched(&board), "a new rate alone waits for the spacing");
        board.record("h1", HostBandwidthReport { enis: vec![], pairs: vec![pair("s1", "r1", 0, 8)] }, 4);
        assert!(woke(&board) && switched(&board), "a pair that stopped sending");
        board.record("h1", HostBandwidthReport { enis: vec![], pairs: vec![] }, 5);
        assert!(woke(&board), "pairs gone");
        assert!(!switched(&board), "gone after it had stopped: no switch");
    }

    #[test]
    fn the_board_answers_caps_and_latest_figures() {
        let board = Board::default();
        assert_eq!(board.record("h1", HostBandwidthReport { pairs: vec![], enis: vec![report_of("a", 5, 6)] }, 1000), HostBandwidthCaps::default());
        board.set_caps([("h1".to_string(), HostBandwidthCaps { pairs: vec![], version: 0, enis: vec![EniCaps { eni_id: "a".into(), tx_cap_bps: Some(1), rx_cap_bps: None }] })].into_iter().collect());
        let caps = board.record("h1", HostBandwidthReport { pairs: vec![], enis: vec![report_of("a", 7, 8)] }, 2000);
        assert_eq!(caps.enis.len(), 1);
        // The ENI moved to h2: the newer report wins.
        board.record("h2", HostBandwidthReport { pairs: vec![], enis: vec![report_of("a", 9, 10)] }, 3000);
        let f = board.eni("a").unwrap();
        assert_eq!((f.host_id.as_str(), f.tx.demand_bps, f.updated_at_ms), ("h2", 9, 3000));
        assert_eq!(board.all()["a"].rx.demand_bps, 10);
        board.expire(2500);
        assert_eq!(board.eni("a").unwrap().host_id, "h2");
        assert!(board.fresh(2500).contains_key("h2") && !board.fresh(2500).contains_key("h1"));
    }
}
