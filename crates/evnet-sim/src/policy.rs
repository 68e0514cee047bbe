//! The bandwidth policies compared by the simulator.
//!
//! A policy turns the current state into a cap per flow; the network
//! ([`crate::maxmin`]) then decides what is delivered: the per-flow max-min of
//! `min(demand, cap)` over the real links. Each policy sees what its real
//! counterpart would see:
//!
//! - [`NoIsolation`] caps nothing: flows share the fabric per-flow max-min, as
//!   TCP does.
//! - [`EdgeShaper`] with [`ShaperLevel::Guarantee`] is static reservation
//!   (Oktopus): a shaper at each ENI's guarantee, in both directions, and TCP
//!   flows under it. With [`ShaperLevel::Limit`] it is caps only (the CNI
//!   bandwidth plugin, Cilium's bandwidth manager): a shaper at the limit (the
//!   class's `caps_only_limit_gbps`, by default its limit) on what the ENI
//!   sends, and on what it receives too when the scenario says
//!   `[caps_only] ingress = true` (Cilium shapes egress only). A shaper is one more link that only that ENI's flows cross, so
//!   both are solved jointly with the fabric.
//! - [`HostLocal`] is HTB on every host's NIC transmit side: each ENI gets
//!   `min(demand, guarantee)`, the rest of the NIC is shared by weight up to
//!   each ENI's limit, and each ENI's rate is split max-min among its flows. It
//!   sees true demand at once (queues are local) but nothing of receivers or
//!   the fabric.
//! - evnet ([`crate::evnet_policy::Evnet`]) runs the real allocator once per
//!   control period on lagged demand estimates and holds the flows to its
//!   answer in between.

use std::rc::Rc;
use std::time::Instant;

use crate::maxmin::{Incidence, MaxMin, Paths};
use crate::scenario::PolicyKind;
use crate::world::World;

/// What a policy sees at a tick.
pub struct TickInput<'a> {
    pub world: &'a World,
    pub tick: usize,
    /// True demand of every flow now.
    pub demand: &'a [u64],
}

/// A bandwidth policy.
pub trait Policy {
    fn kind(&self) -> PolicyKind;

    /// Writes this tick's cap of every flow into `caps` (whose length is the
    /// number of flows). Returns the wall time in milliseconds of the
    /// policy's own computation when it computed something this tick (a
    /// round), or `None` when it only held its last answer.
    fn caps(&mut self, input: &TickInput<'_>, caps: &mut Vec<u64>) -> Option<f64>;

    /// What the network delivered to every flow this tick under those caps
    /// (what a policy that meters sees). Most policies do not look.
    fn observe(&mut self, _world: &World, _delivered: &[u64]) {}
}

/// No policy at all.
#[derive(Debug, Default)]
pub struct NoIsolation;

impl Policy for NoIsolation {
    fn kind(&self) -> PolicyKind {
        PolicyKind::NoIsolation
    }

    fn caps(&mut self, input: &TickInput<'_>, caps: &mut Vec<u64>) -> Option<f64> {
        caps.clear();
        caps.resize(input.world.flows(), u64::MAX);
        None
    }
}

/// The fabric plus one transmit and one receive shaper link per ENI: flow
/// `f` crosses its real path, then link `L + src` and link `L + E + dst`.
/// Built once and shared by the two edge-shaper policies.
#[derive(Debug)]
pub struct EdgeTopology {
    pub paths: Paths,
    pub incidence: Incidence,
}

impl EdgeTopology {
    pub fn build(w: &World) -> EdgeTopology {
        let (l, e) = (w.links() as u32, w.enis() as u32);
        let mut paths = Paths::with_capacity(w.flows(), w.paths.hops() + 2 * w.flows());
        let mut buf = Vec::with_capacity(6);
        for f in 0..w.flows() {
            buf.clear();
            buf.extend_from_slice(w.paths.path(f));
            buf.push(l + w.flow_src[f]);
            buf.push(l + e + w.flow_dst[f]);
            paths.push(&buf);
        }
        let incidence = Incidence::build(&paths, (l + 2 * e) as usize);
        EdgeTopology { paths, incidence }
    }
}

/// Where an edge shaper is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShaperLevel {
    Guarantee,
    Limit,
}

/// A fixed shaper per ENI and direction, with TCP-like sharing under it.
#[derive(Debug)]
pub struct EdgeShaper {
    level: ShaperLevel,
    topology: Rc<EdgeTopology>,
    capacity: Vec<u64>,
    solver: MaxMin,
    demand_caps: Vec<u64>,
}

impl EdgeShaper {
    /// `ingress`: whether the shaper also holds what each ENI receives
    /// (otherwise its receive link is unlimited).
    pub fn new(w: &World, topology: Rc<EdgeTopology>, level: ShaperLevel, ingress: bool) -> EdgeShaper {
        let per_eni = match level {
            ShaperLevel::Guarantee => &w.eni_guarantee,
            ShaperLevel::Limit => &w.eni_caps_only,
        };
        let mut capacity = w.link_capacity.clone();
        capacity.extend_from_slice(per_eni);
        if ingress {
            capacity.extend_from_slice(per_eni);
        } else {
            capacity.extend(std::iter::repeat_n(u64::MAX / 4, per_eni.len()));
        }
        EdgeShaper { level, topology, capacity, solver: MaxMin::new(), demand_caps: Vec::new() }
    }
}

impl Policy for EdgeShaper {
    fn kind(&self) -> PolicyKind {
        match self.level {
            ShaperLevel::Guarantee => PolicyKind::StaticReservation,
            ShaperLevel::Limit => PolicyKind::CapsOnly,
        }
    }

    fn caps(&mut self, input: &TickInput<'_>, caps: &mut Vec<u64>) -> Option<f64> {
        let started = Instant::now();
        self.demand_caps.clear();
        self.demand_caps.extend_from_slice(input.demand);
        let t = &*self.topology;
        self.solver.solve(&self.capacity, &t.paths, &t.incidence, &self.demand_caps, None, caps);
        Some(started.elapsed().as_secs_f64() * 1e3)
    }
}

/// Weighted water-filling of `capacity` on one resource: each claimant `i`
/// gets `min(want[i], λ · weight[i])` with λ as large as fits. `order` is
/// scratch. Deterministic (ties broken by index).
pub fn water_fill(capacity: u64, want: &[u64], weight: &[u32], order: &mut Vec<u32>, out: &mut [u64]) {
    let n = want.len();
    order.clear();
    order.extend((0..n as u32).filter(|&i| want[i as usize] > 0));
    out[..n].iter_mut().for_each(|x| *x = 0);
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (a as usize, b as usize);
        // want[a]/weight[a] vs want[b]/weight[b], exactly.
        (want[a] as u128 * weight[b] as u128).cmp(&(want[b] as u128 * weight[a] as u128)).then(a.cmp(&b))
    });
    let mut left = capacity as u128;
    let mut wsum: u128 = order.iter().map(|&i| weight[i as usize] as u128).sum();
    for (k, &i) in order.iter().enumerate() {
        let i = i as usize;
        let w = weight[i] as u128;
        // Fair share of what is left among those not yet served.
        let share = left * w / wsum;
        if (want[i] as u128) <= share {
            out[i] = want[i];
            left -= want[i] as u128;
            wsum -= w;
        } else {
            // Everyone from here on wants more than their share: split by weight.
            for &j in &order[k..] {
                let j = j as usize;
                out[j] = (left * weight[j] as u128 / wsum) as u64;
            }
            return;
        }
    }
}

/// HTB-like work-conserving sharing of each host's NIC transmit side.
#[derive(Debug)]
pub struct HostLocal {
    /// ENIs of each host (compressed rows).
    host_off: Vec<u32>,
    host_enis: Vec<u32>,
    /// Flows sent by each ENI (compressed rows).
    eni_off: Vec<u32>,
    eni_flows: Vec<u32>,
    eni_demand: Vec<u64>,
    eni_rate: Vec<u64>,
    want: Vec<u64>,
    weight: Vec<u32>,
    out: Vec<u64>,
    order: Vec<u32>,
    ones: Vec<u32>,
}

fn rows(n: usize, keys: impl Iterator<Item = u32> + Clone) -> (Vec<u32>, Vec<u32>) {
    let mut off = vec![0u32; n + 1];
    for k in keys.clone() {
        off[k as usize + 1] += 1;
    }
    for i in 0..n {
        off[i + 1] += off[i];
    }
    let mut fill = off.clone();
    let mut items = vec![0u32; off[n] as usize];
    for (i, k) in keys.enumerate() {
        items[fill[k as usize] as usize] = i as u32;
        fill[k as usize] += 1;
    }
    (off, items)
}

impl HostLocal {
    pub fn new(w: &World) -> HostLocal {
        let (host_off, host_enis) = rows(w.hosts, w.eni_host.iter().copied());
        let (eni_off, eni_flows) = rows(w.enis(), w.flow_src.iter().copied());
        HostLocal {
            host_off,
            host_enis,
            eni_off,
            eni_flows,
            eni_demand: vec![0; w.enis()],
            eni_rate: vec![0; w.enis()],
            want: Vec::new(),
            weight: Vec::new(),
            out: Vec::new(),
            order: Vec::new(),
            ones: Vec::new(),
        }
    }
}

impl Policy for HostLocal {
    fn kind(&self) -> PolicyKind {
        PolicyKind::HostLocal
    }

    fn caps(&mut self, input: &TickInput<'_>, caps: &mut Vec<u64>) -> Option<f64> {
        let started = Instant::now();
        self.shape(input.world, input.demand, caps);
        Some(started.elapsed().as_secs_f64() * 1e3)
    }
}

impl HostLocal {
    /// The rate of every flow (into `caps`) that each host's tree gives on
    /// its NIC's transmit side for the flows' `demand` (already held to any
    /// ceiling they have): per ENI `min(demand, guarantee)`, the rest of the
    /// NIC by weight up to demand (at most the limit), each ENI's rate
    /// split max-min among its flows.
    pub fn shape(&mut self, w: &World, demand: &[u64], caps: &mut Vec<u64>) {
        for e in 0..w.enis() {
            let flows = &self.eni_flows[self.eni_off[e] as usize..self.eni_off[e + 1] as usize];
            let d: u64 = flows.iter().map(|&f| demand[f as usize]).fold(0u64, u64::saturating_add);
            self.eni_demand[e] = d.min(w.eni_limit[e]);
        }
        for h in 0..w.hosts {
            let enis = &self.host_enis[self.host_off[h] as usize..self.host_off[h + 1] as usize];
            let nic = w.link_capacity[World::host_tx(h)];
            // Guarantees first (admission keeps their sum under the NIC; if a
            // scenario breaks that, they are water-filled like everything else).
            self.want.clear();
            self.weight.clear();
            self.want.extend(enis.iter().map(|&e| self.eni_demand[e as usize].min(w.eni_guarantee[e as usize])));
            self.weight.extend(enis.iter().map(|&e| w.eni_weight[e as usize]));
            self.out.resize(enis.len(), 0);
            water_fill(nic, &self.want, &self.weight, &mut self.order, &mut self.out);
            let used: u64 = self.out.iter().sum();
            for (k, &e) in enis.iter().enumerate() {
                self.eni_rate[e as usize] = self.out[k];
                self.want[k] = self.eni_demand[e as usize] - self.out[k];
            }
            // Then the rest of the NIC by weight, up to demand (already ≤ limit).
            water_fill(nic - used, &self.want, &self.weight, &mut self.order, &mut self.out);
            for (k, &e) in enis.iter().enumerate() {
                self.eni_rate[e as usize] += self.out[k];
            }
        }
        caps.clear();
        caps.resize(w.flows(), 0);
        for e in 0..w.enis() {
            let flows = &self.eni_flows[self.eni_off[e] as usize..self.eni_off[e + 1] as usize];
            self.want.clear();
            self.want.extend(flows.iter().map(|&f| demand[f as usize]));
            if self.ones.len() < flows.len() {
                self.ones.resize(flows.len(), 1);
            }
            self.out.resize(flows.len(), 0);
            water_fill(self.eni_rate[e], &self.want, &self.ones[..flows.len()], &mut self.order, &mut self.out);
            for (k, &f) in flows.iter().enumerate() {
                caps[f as usize] = self.out[k];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn water_fill_weighted() {
        let mut out = vec![0; 4];
        let mut order = Vec::new();
        water_fill(100, &[10, 100, 100, 0], &[1, 1, 2, 1], &mut order, &mut out);
        assert_eq!(out, vec![10, 30, 60, 0]);
        water_fill(1_000, &[10, 100, 100, 5], &[1, 1, 2, 1], &mut order, &mut out);
        assert_eq!(out, vec![10, 100, 100, 5]);
        water_fill(0, &[10, 100], &[1, 1], &mut order, &mut out[..2]);
        assert_eq!(&out[..2], &[0, 0]);
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;
    use crate::scenario::Scenario;

    pub(crate) fn small_world(extra: &str) -> World {
        let s = Scenario::parse(
            &format!(
                r#"
name = "t"
seed = 11
duration_s = 4.0
tick_s = 0.5
[fabric]
racks = 2
hosts_per_rack = 2
nic_gbps = 10
spines = 1
oversubscription = 1.0
[placement]
instances_per_host = 3
[[tenant_class]]
name = "a"
share = 0.5
instances_per_tenant = 6
guaranteed_gbps = 2
limit_gbps = 8
weight = 3
pattern = "backlogged"
flows_per_eni = 2
{extra}
[[tenant_class]]
name = "b"
share = 0.5
instances_per_tenant = 6
guaranteed_gbps = 0.5
limit_gbps = 10
pattern = "incast"
flows_per_eni = 3
"#
            ),
            "t",
        )
        .unwrap();
        World::build(&s).unwrap()
    }

    fn per_eni(w: &World, caps: &[u64]) -> (Vec<u64>, Vec<u64>) {
        let (mut tx, mut rx) = (vec![0u64; w.enis()], vec![0u64; w.enis()]);
        for f in 0..w.flows() {
            tx[w.flow_src[f] as usize] += caps[f];
            rx[w.flow_dst[f] as usize] += caps[f];
        }
        (tx, rx)
    }

    #[test]
    fn static_reservation_holds_each_eni_to_its_guarantee_both_ways() {
        let w = small_world("");
        let mut demand = Vec::new();
        w.demands(&mut demand);
        let topo = Rc::new(EdgeTopology::build(&w));
        let mut p = EdgeShaper::new(&w, topo.clone(), ShaperLevel::Guarantee, true);
        let mut caps = Vec::new();
        assert!(p.caps(&TickInput { world: &w, tick: 0, demand: &demand }, &mut caps).is_some());
        let (tx, rx) = per_eni(&w, &caps);
        for e in 0..w.enis() {
            assert!(tx[e] <= w.eni_guarantee[e] && rx[e] <= w.eni_guarantee[e], "ENI {e}: {} {}", tx[e], rx[e]);
        }
        // Egress-only caps leave what ENIs receive alone: an incast sink gets
        // more than its cap from its senders.
        let mut c = EdgeShaper::new(&w, topo, ShaperLevel::Limit, false);
        c.caps(&TickInput { world: &w, tick: 0, demand: &demand }, &mut caps);
        let (tx, rx) = per_eni(&w, &caps);
        assert!((0..w.enis()).all(|e| tx[e] <= w.eni_caps_only[e]));
        assert!((0..w.enis()).any(|e| rx[e] > w.eni_caps_only[e]), "{rx:?}");
    }

    #[test]
    fn host_local_gives_guarantees_then_fills_the_nic_by_weight() {
        let w = small_world("");
        let mut demand = Vec::new();
        w.demands(&mut demand);
        let mut p = HostLocal::new(&w);
        let mut caps = Vec::new();
        p.caps(&TickInput { world: &w, tick: 0, demand: &demand }, &mut caps);
        let (tx, _) = per_eni(&w, &caps);
        let (want, _) = per_eni(&w, &demand);
        let mut host_tx = vec![0u64; w.hosts];
        for e in 0..w.enis() {
            host_tx[w.eni_host[e] as usize] += tx[e];
            if want[e] > 0 {
                // Every sender here is backlogged: at least its guarantee, at most its limit.
                assert!(tx[e] >= w.eni_guarantee[e] && tx[e] <= w.eni_limit[e], "ENI {e}: {}", tx[e]);
            } else {
                assert_eq!(tx[e], 0);
            }
        }
        for h in 0..w.hosts {
            let nic = w.link_capacity[World::host_tx(h)];
            let limits: u64 = (0..w.enis())
                .filter(|&e| w.eni_host[e] as usize == h && want[e] > 0)
                .map(|e| w.eni_limit[e].min(want[e]))
                .sum();
            // Work-conserving: the NIC is full unless every ENI is at its limit
            // (integer splits may leave a few bit/s).
            assert!(host_tx[h] <= nic && host_tx[h] + 32 >= nic.min(limits), "host {h}: {} of {nic}", host_tx[h]);
        }
    }
}
